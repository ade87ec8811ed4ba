# Every target does its own set-up on a fresh root Linux machine (Debian/Ubuntu):
# the apt packages the lab needs, a virtualenv, the package with its test extra.
VENV ?= .venv
PY := $(VENV)/bin/python
PROVISION := $(VENV)/bin/provision
APT_PACKAGES := openssh-server openssh-client iproute2 nftables iptables chrony sudo util-linux procps psmisc nfs-common ufw
LAB_INVENTORY := .lab/plab/inventory.yaml
PYTEST_FLAGS ?= -q

.PHONY: deps deps-vm test test-unit test-lab test-vm demo lab-down clean

deps: $(VENV)/.installed
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The fast tiers: unit tests and the lab (real sshd, nftables, chrony, torchrun in namespaces).
test: deps
	$(PY) -m pytest $(PYTEST_FLAGS) -m "not vm and not gpu" tests

test-unit: deps
	$(PY) -m pytest $(PYTEST_FLAGS) tests/unit

test-lab: deps
	$(PY) -m pytest $(PYTEST_FLAGS) -m lab tests

# The VM tier: real kernel NFS, systemd, reboots; QEMU (software emulation) driven by the
# project's own vagrant/Vagrantfile through vagrant-libvirt. The image is built from Debian's
# packages and cached in /var/cache/provision-vm (PROVISION_VM_CACHE).
VM_APT_PACKAGES := qemu-system-x86 qemu-utils debootstrap vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients e2fsprogs
deps-vm: deps
	@missing=$$(for p in $(VM_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test-vm: deps-vm
	$(PY) -m pytest $(PYTEST_FLAGS) -m vm tests/vm

# The whole flow on a 3-host lab. Miniconda cannot be downloaded on a machine without internet
# access, so the demo installs it from the tests' installer stand-in (tests/doubles), set to
# install a venv of the virtualenv's Python (it has torch); on real hosts, `provision setup`
# downloads the official installer once and checks its sha256.
DEMO_INSTALLER := $(CURDIR)/.lab/Miniconda3-demo-installer.sh
DEMO_VARS = -e conda_installer_path=$(DEMO_INSTALLER) \
            -e conda_installer_sha256=$$(sha256sum $(DEMO_INSTALLER) | cut -d' ' -f1)
$(DEMO_INSTALLER): tests/doubles/miniconda-installer.sh $(VENV)/.installed
	mkdir -p $(@D)
	sed 's|^BASE_PYTHON=python3$$|BASE_PYTHON=$(abspath $(PY))|' $< > $@

demo: deps $(DEMO_INSTALLER)
	$(PROVISION) lab up --hosts 3
	$(PROVISION) setup $(LAB_INVENTORY) $(DEMO_VARS)
	$(PROVISION) setup $(LAB_INVENTORY) $(DEMO_VARS)   # again: nothing to change
	$(PROVISION) check $(LAB_INVENTORY) $(DEMO_VARS)
	$(PROVISION) train -i $(LAB_INVENTORY) examples/ddp_smoke.py --steps 20
	@echo; echo "The lab stays up: try $(PROVISION) exec $(LAB_INVENTORY) -- uptime"; \
	 echo "Tear it down with: make lab-down"

lab-down:
	$(PROVISION) lab down

clean: lab-down
	rm -rf $(VENV) .lab
