#!/bin/bash
# Builds a Debian 12 libvirt box for the VM test tier (and for anyone without internet access to
# Vagrant Cloud) from Debian's packages only: debootstrap -> ext4 image -> qcow2 -> a local
# vagrant-libvirt box. The box boots by direct kernel boot (no bootloader in the image), so the
# kernel and initrd are written next to it for the Vagrantfile's PROVISION_VM_KERNEL/_INITRD.
#
#   vagrant/box/build-box.sh [CACHE_DIR]     (default $PROVISION_VM_CACHE or /var/cache/provision-vm)
#
# Needs root, debootstrap, qemu-utils, e2fsprogs, and vagrant (for its public insecure key).
# Everything goes to CACHE_DIR; a finished build is reused while this script is unchanged
# (CACHE_DIR/stamp holds its sha256). ~2 minutes on 2 cores, ~0.9 GB.
#
# Outputs: CACHE_DIR/provision-debian12.box (box.img inside is the qcow2 disk), vmlinuz, initrd.img.
# The guest: user vagrant (Vagrant's insecure key, passwordless sudo) as on Vagrant Cloud boxes;
# systemd-networkd, whose network comes from the kernel command line (ip=...), since the box is
# meant for networks Vagrant does not configure; qemu-guest-agent (vagrant-libvirt asks it for the
# address); no apt sources reachable, no timers; SSH host keys made at first boot.
set -euo pipefail

CACHE=${1:-${PROVISION_VM_CACHE:-/var/cache/provision-vm}}
SUITE=bookworm
DISK_GB=${PROVISION_VM_DISK_GB:-12}     # sparse; the preflight role wants 8 GB free under /opt
PACKAGES=systemd-sysv,udev,dbus,openssh-server,linux-image-amd64,nfs-common,nfs-kernel-server,\
nftables,chrony,python3,python3-yaml,python3-venv,sudo,iproute2,procps,kmod,qemu-guest-agent,\
e2fsprogs,less,iputils-ping

[ "$(id -u)" = 0 ] || { echo "build-box.sh: needs root (debootstrap, chroot)" >&2; exit 2; }
for tool in debootstrap qemu-img mkfs.ext4 vagrant; do
    command -v "$tool" >/dev/null || { echo "build-box.sh: $tool is not installed" >&2; exit 2; }
done

stamp=$(sha256sum "$0" | cut -d' ' -f1)
if [ -f "$CACHE/stamp" ] && [ "$(cat "$CACHE/stamp")" = "$stamp" ] \
   && [ -f "$CACHE/provision-debian12.box" ]; then
    echo "build-box.sh: $CACHE is up to date"
    exit 0
fi

# The mirror apt already uses on this machine: the only place anything is downloaded from.
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb / && $3 == "'"$SUITE"'" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
mirror=${PROVISION_VM_MIRROR:-${mirror:-http://deb.debian.org/debian}}

pubkey=""
for candidate in /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
                 /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub; do
    [ -f "$candidate" ] && pubkey=$candidate && break
done
[ -n "$pubkey" ] || { echo "build-box.sh: Vagrant's keys/vagrant.pub not found" >&2; exit 2; }

mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/build.XXXXXX")
cleanup() {
    for m in proc sys dev; do umount -l "$work/root/$m" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
root=$work/root

echo "build-box.sh: debootstrap $SUITE from $mirror"
mkdir -p "$CACHE/debs"     # downloaded packages, kept for the next build
debootstrap --variant=minbase --cache-dir="$CACHE/debs" --include="$PACKAGES" "$SUITE" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -30 "$work/debootstrap.log" >&2; exit 1; }

cat > "$root/etc/fstab" <<'FSTAB'
/dev/vda / ext4 defaults,errors=remount-ro 0 1
FSTAB
echo debian12 > "$root/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
: > "$root/etc/apt/sources.list"    # the guests have no route to any mirror

chroot "$root" useradd -m -s /bin/bash -G sudo vagrant
echo vagrant:vagrant | chroot "$root" chpasswd
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > "$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"
install -d -m 700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
install -m 600 -o 1000 -g 1000 "$pubkey" "$root/home/vagrant/.ssh/authorized_keys"

# sshd: no DNS lookups (no resolver here), host keys made at first boot (each VM its own).
echo 'UseDNS no' > "$root/etc/ssh/sshd_config.d/provision-vm.conf"
rm -f "$root"/etc/ssh/ssh_host_*
cat > "$root/etc/systemd/system/ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=SSH host keys for this machine
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
RequiredBy=ssh.service
UNIT

# Networking: systemd-networkd, configured from the kernel command line's ip=.
sed -i 's/^\(pool\|server\) /#&/' "$root/etc/chrony/chrony.conf"
chroot "$root" systemctl enable systemd-networkd systemd-network-generator ssh-hostkeys qemu-guest-agent >/dev/null 2>&1 || true
chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer fstrim.timer e2scrub_all.timer \
    e2scrub_reap.service man-db.timer >/dev/null 2>&1
# network-online.target (which NFS mounts in fstab wait for) once eth0 is configured, 30 s at most.
mkdir -p "$root/etc/systemd/system/systemd-networkd-wait-online.service.d"
cat > "$root/etc/systemd/system/systemd-networkd-wait-online.service.d/provision-vm.conf" <<'UNIT'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30
UNIT
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/var/cache/apt/archives/*.deb \
       "$root"/var/lib/apt/lists/*

cp "$root"/boot/vmlinuz-* "$work/vmlinuz"
cp "$root"/boot/initrd.img-* "$work/initrd.img"
chmod 644 "$work/vmlinuz" "$work/initrd.img"

echo "build-box.sh: ext4 image (${DISK_GB} GiB, sparse) and qcow2"
truncate -s "${DISK_GB}G" "$work/disk.raw"
mkfs.ext4 -q -F -L root -d "$root" "$work/disk.raw"
qemu-img convert -O qcow2 "$work/disk.raw" "$work/box.img"
rm -f "$work/disk.raw"

# A vagrant-libvirt box: metadata.json + Vagrantfile + box.img in one (uncompressed) tar.
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$DISK_GB" > "$work/metadata.json"
cat > "$work/Vagrantfile" <<'VF'
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = "qemu"
  end
end
VF
tar -C "$work" -cf "$work/provision-debian12.box" metadata.json Vagrantfile box.img

rm -f "$CACHE/stamp"
mv -f "$work/vmlinuz" "$work/initrd.img" "$CACHE/"
rm -f "$work/box.img"
mv -f "$work/provision-debian12.box" "$CACHE/provision-debian12.box"
echo "$stamp" > "$CACHE/stamp"
echo "build-box.sh: done: $CACHE/provision-debian12.box"
