#!/bin/bash
# TEST DOUBLE. Stands in for the official Miniconda3 installer (Miniconda3-py311_24.7.1-0-Linux-
# x86_64.sh), which cannot be downloaded here. Same interface: `bash installer -b [-u] [-f] -p
# PREFIX`, the same refusal of an existing prefix without -u, and the same layout afterwards:
# PREFIX/bin/python (a real Python: a venv of BASE_PYTHON, which sees the machine's torch),
# PREFIX/bin/conda, PREFIX/conda-meta/history and conda-meta/<name>-<version>-<build>.json for
# the packages it "links" (conda and python among them).
# Like the real installer it is a shell header with a payload: everything after the
# @@CONDA_DOUBLE@@ line is the `conda` CLI double (a Python script) installed as PREFIX/bin/conda.
# Tests copy this file with BASE_PYTHON set to the Python that has torch (see tests/lab/test_conda.py).
set -eu

BASE_PYTHON=python3
VER=py311_24.7.1-0
CONDA_VERSION=24.7.1
PTH=base-python-packages.pth

usage() {
    cat <<EOF
usage: $0 [options]

Installs Miniconda3 $VER

-b           run install in batch mode (without manual intervention),
             it is expected the license terms (if any) are agreed upon
-f           no error if install prefix already exists
-h           print this help message and exit
-p PREFIX    install prefix, defaults to \$HOME/miniconda3, must not contain spaces.
-u           update an existing installation
EOF
}

BATCH=0 FORCE=0 UPDATE=0 PREFIX="$HOME/miniconda3"
while getopts "bfhp:u" opt; do
    case "$opt" in
        b) BATCH=1 ;;
        f) FORCE=1 ;;
        p) PREFIX="$OPTARG" ;;
        u) UPDATE=1 ;;
        h) usage; exit 2 ;;
        *) usage >&2; exit 2 ;;
    esac
done
if [ "$BATCH" = 0 ]; then
    echo "ERROR: this double only installs in batch mode (-b); the real one shows its license" >&2
    exit 2
fi
case "$PREFIX" in
    *" "*) echo "ERROR: Cannot install into directories with spaces" >&2; exit 1 ;;
esac
if [ -e "$PREFIX" ] && [ "$UPDATE" = 0 ] && [ "$FORCE" = 0 ]; then
    echo "ERROR: File or directory already exists: '$PREFIX'" >&2
    echo "If you want to update an existing installation, use the -u option." >&2
    exit 1
fi

echo "PREFIX=$PREFIX"
echo "Unpacking payload ..."
mkdir -p "$PREFIX/conda-meta" "$PREFIX/bin" "$PREFIX/envs" "$PREFIX/pkgs"
"$BASE_PYTHON" -m venv --without-pip --system-site-packages "$PREFIX"
PY_VERSION=$("$PREFIX/bin/python" -c 'import platform; print(platform.python_version())')
# When BASE_PYTHON is itself a venv, a venv of it drops that venv's packages (torch): keep them.
"$BASE_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
    > "$("$PREFIX/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/$PTH"
rm -f "$PREFIX"/conda-meta/conda-[0-9]*.json "$PREFIX"/conda-meta/python-[0-9]*.json
for pkg in "conda $CONDA_VERSION py311h06a4308_0" "python $PY_VERSION h955ad1f_1"; do
    set -- $pkg
    printf '{"name": "%s", "version": "%s", "build": "%s", "channel": "pkgs/main"}\n' "$1" "$2" "$3" \
        > "$PREFIX/conda-meta/$1-$2-$3.json"
done
{ echo "==> $(date '+%Y-%m-%d %H:%M:%S') <=="
  echo "# cmd: constructor $VER"
  echo "+defaults/linux-64::conda-$CONDA_VERSION-py311h06a4308_0"
  echo "+defaults/linux-64::python-$PY_VERSION-h955ad1f_1"; } >> "$PREFIX/conda-meta/history"
# Like conda's entry points: the script's shebang is the prefix's own python.
{ echo "#!$PREFIX/bin/python"
  sed -n '/^@@CONDA_DOUBLE@@$/,$p' "$0" | tail -n +2; } > "$PREFIX/bin/conda"
chmod 755 "$PREFIX/bin/conda"
echo "installation finished."
exit 0
@@CONDA_DOUBLE@@
"""TEST DOUBLE. Stands in for the `conda` CLI of Miniconda (conda 24.7.1), the subset the conda
role uses: `conda --version`, `conda env create --file F (--prefix P | --name N)`,
`conda env update --file F (--prefix P | --name N) [--prune]` and, for explicit lock files
(`@EXPLICIT` and one package URL a line, as `conda-lock --kind explicit` and
`conda list --explicit` write them), `conda create --yes --file F (--prefix P | --name N)`. Environments are real: a venv of
this prefix's python with --system-site-packages (so the machine's torch imports), with the
conda-meta/ records conda keeps. Failures read as conda's own.

The "channels" hold every package except those the test lists in <root>/.double-channel:
`missing NAME` (the solver finds no NAME: PackagesNotFoundError, nothing created) or
`broken NAME` (the transaction dies while linking NAME, leaving the packages linked so far, as a
killed conda or a failing post-link script does).
"""
import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSION = "24.7.1"
PTH = "base-python-packages.pth"


def fail(kind, message):
    print(f"\n{kind}: {message}\n", file=sys.stderr)
    sys.exit(1)


def channel_state():
    state = {}
    try:
        with open(os.path.join(ROOT, ".double-channel")) as handle:
            for line in handle:
                if len(line.split()) == 2:
                    kind, name = line.split()
                    state[name.lower()] = kind
    except FileNotFoundError:
        pass
    return state


def parse_spec(dep):
    """'pytorch::pytorch=2.4.1=py3.11_cuda12.4_0' -> (channel, name, version, build)."""
    channel, _, spec = dep.rpartition("::")
    name, version, build = (re.split(r"[=<>!~ ]+", spec.strip(), maxsplit=2) + ["", ""])[:3]
    return channel, name.lower(), version or "0", build or "0"


def load_file(path):
    if not os.path.isfile(path):
        fail("EnvironmentFileNotFound", f"'{os.path.abspath(path)}' file not found")
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        fail("CondaValueError", f"invalid YAML in {path}: {exc}")
    if not isinstance(data, dict):
        fail("CondaValueError", f"{path} is not an environment file")
    deps = [d for d in data.get("dependencies") or [] if isinstance(d, str)]
    return data.get("name"), data.get("channels") or ["defaults"], [parse_spec(d) for d in deps]


def load_explicit(path):
    """An explicit lock: the packages are given, nothing is solved (conda only fetches them)."""
    if not os.path.isfile(path):
        fail("CondaFileIOError", f"'{path}'. [Errno 2] No such file or directory: '{path}'")
    with open(path) as handle:
        lines = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    if not lines or lines[0] != "@EXPLICIT":
        fail("CondaValueError", f"{path} is not an explicit lock file (no @EXPLICIT line)")
    specs = []
    for url in lines[1:]:
        match = re.match(r"^https?://\S+/(?P<ch>[^/]+)/[^/]+/"
                         r"(?P<n>.+)-(?P<v>[^-]+)-(?P<b>[^-]+)\.(tar\.bz2|conda)(#\w+)?$", url)
        if not match:
            fail("CondaValueError", f"could not parse explicit URL: {url}")
        specs.append((match["ch"], match["n"].lower(), match["v"], match["b"]))
    return specs


def solve(channels, specs):
    print("Channels:\n" + "".join(f" - {c}\n" for c in channels) + "Platform: linux-64")
    print("Collecting package metadata (repodata.json): done\nSolving environment: ", end="")
    missing = [name for _, name, _, _ in specs if channel_state().get(name) == "missing"]
    if missing:
        print("failed")
        bases = ["https://repo.anaconda.com/pkgs/main" if c == "defaults" else
                 f"https://conda.anaconda.org/{c}" for c in channels]
        urls = "".join(f"  - {b}/linux-64\n  - {b}/noarch\n" for b in bases)
        fail("PackagesNotFoundError",
             "The following packages are not available from current channels:\n\n"
             + "".join(f"  - {n}\n" for n in missing) + "\nCurrent channels:\n\n" + urls
             + "\nTo search for alternate channels that may provide the conda package you're\n"
               "looking for, navigate to\n\n    https://anaconda.org\n\n"
               "and use the search bar at the top of the page.")
    print("done")


def link(prefix, specs, command, prune):
    """Create or refresh the venv and its conda-meta records, dying at a `broken` package."""
    meta = os.path.join(prefix, "conda-meta")
    os.makedirs(meta, exist_ok=True)
    wanted = {f"{n}-{v}-{b}.json" for _, n, v, b in specs}
    with open(os.path.join(meta, "history"), "a") as history:
        history.write(f"==> {datetime.datetime.now():%Y-%m-%d %H:%M:%S} <==\n# cmd: {command}\n")
    print("Preparing transaction: done\nVerifying transaction: done\nExecuting transaction: ",
          end="", flush=True)
    if not os.path.exists(os.path.join(prefix, "bin", "python")):
        subprocess.run([os.path.join(ROOT, "bin", "python"), "-m", "venv", "--without-pip",
                        "--system-site-packages", prefix], check=True)
        # The installer's pointer at the machine's packages (torch), as in the base env.
        site = sysconfig.get_paths(vars={"base": prefix, "platbase": prefix})["purelib"]
        shutil.copy(os.path.join(sysconfig.get_paths()["purelib"], PTH), site)
    if prune:
        for old in os.listdir(meta):
            if old.endswith(".json") and old not in wanted:
                os.remove(os.path.join(meta, old))
    broken = channel_state()
    for channel, name, version, build in specs:
        if broken.get(name) == "broken":
            print("failed")
            fail("LinkError", f"post-link script failed for package "
                              f"{channel or 'defaults'}::{name}-{version}-{build}")
        record = {"name": name, "version": version, "build": build, "channel": channel}
        with open(os.path.join(meta, f"{name}-{version}-{build}.json"), "w") as handle:
            json.dump(record, handle)
    print("done")


def target(args, name_from_file):
    if args.prefix:
        return os.path.abspath(args.prefix)
    name = args.name or name_from_file
    if not name:
        fail("CondaValueError", "either -n NAME or -p PREFIX option required,\n"
                                "try \"conda env create -n NAME -f FILE\"")
    return os.path.join(ROOT, "envs", name)


def env_create(args):
    file_name, channels, specs = load_file(args.file)
    prefix = target(args, file_name)
    if os.path.exists(prefix):
        fail("CondaValueError", f"prefix already exists: {prefix}")
    solve(channels, specs)
    link(prefix, specs, "conda env create " + " ".join(sys.argv[3:]), prune=False)


def env_update(args):
    file_name, channels, specs = load_file(args.file)
    prefix = target(args, file_name)
    if not os.path.isfile(os.path.join(prefix, "conda-meta", "history")):
        fail("EnvironmentLocationNotFound", f"Not a conda environment: {prefix}")
    solve(channels, specs)
    link(prefix, specs, "conda env update " + " ".join(sys.argv[3:]), prune=args.prune)


def create(args):
    specs = load_explicit(args.file)
    prefix = target(args, None)
    if os.path.exists(prefix):
        fail("CondaValueError", f"prefix already exists: {prefix}")
    missing = [name for _, name, _, _ in specs if channel_state().get(name) == "missing"]
    if missing:
        fail("CondaHTTPError", f"HTTP 404 NOT FOUND for url <{missing[0]}>")
    link(prefix, specs, "conda create " + " ".join(sys.argv[2:]), prune=False)


def main():
    parser = argparse.ArgumentParser(prog="conda")
    parser.add_argument("--version", "-V", action="version", version=f"conda {VERSION}")
    commands = parser.add_subparsers(dest="command")
    env = commands.add_parser("env").add_subparsers(dest="env_command")
    for name, handler in (("create", env_create), ("update", env_update)):
        sub = env.add_parser(name)
        sub.add_argument("--file", "-f", default="environment.yml")
        where = sub.add_mutually_exclusive_group()
        where.add_argument("--prefix", "-p")
        where.add_argument("--name", "-n")
        if name == "update":
            sub.add_argument("--prune", action="store_true")
        sub.set_defaults(handler=handler)
    plain = commands.add_parser("create")
    plain.add_argument("--file", required=True)
    plain.add_argument("--yes", "-y", action="store_true")
    where = plain.add_mutually_exclusive_group()
    where.add_argument("--prefix", "-p")
    where.add_argument("--name", "-n")
    plain.set_defaults(handler=create)
    args = parser.parse_args()
    if not hasattr(args, "handler"):
        fail("CommandNotFoundError", f"this conda double does not implement {sys.argv[1:]}")
    args.handler(args)


main()
