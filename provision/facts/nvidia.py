"""The NVIDIA GPUs of a host, as its nvidia-smi reports them: one fact, two invocations."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from provision.facts.base import Fact

# Per-GPU fields, in output order (`nvidia-smi --help-query-gpu` documents each).
QUERY_FIELDS = (
    "index",
    "name",
    "uuid",
    "pci.bus_id",
    "driver_version",
    "memory.total",
    "persistence_mode",
    "ecc.errors.uncorrected.volatile.total",
    "retired_pages.pending",
)
QUERY_ARGV = (
    "nvidia-smi",
    "--query-gpu=" + ",".join(QUERY_FIELDS),
    "--format=csv,noheader,nounits",
)
# The CUDA version the driver supports is printed only in the header of `-q`; `-d COMPUTE` keeps
# the per-GPU part of it to one line.
HEADER_ARGV = ("nvidia-smi", "-q", "-d", "COMPUTE")
SEPARATOR = "@@provision: nvidia-smi -q follows@@"

# "Unable to determine the device handle for GPU0000:4E:00.0: Unknown Error". Older drivers put
# a space after "GPU"; the reason may read "GPU is lost.  Reboot the system to recover this GPU".
_NO_HANDLE = re.compile(
    r"^Unable to determine the device handle for GPU ?(?P<bus>[0-9A-Fa-f]+:[0-9A-Fa-f]{2}:"
    r"[0-9A-Fa-f]{2}\.[0-9A-Fa-f]): (?P<reason>.+)$",
    re.IGNORECASE,
)
# An unindented "Key      : value" line of the `-q` header.
_HEADER_LINE = re.compile(r"^(?P<key>[^\s:][^:]*?)\s+: (?P<value>.*)$", re.MULTILINE)
# Exit statuses of nvidia-smi (see its man page) that have a known remedy.
_HINTS = {
    9: "its kernel module is not loaded; after a kernel upgrade, see `dkms status`",
    18: "the loaded kernel module differs from the installed driver: reboot after a driver upgrade",
}


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    uuid: str
    bus_id: str
    memory_mib: int | None
    persistence: bool | None
    # None where the GPU cannot say: ECC turned off, or page retirement replaced by row remapping.
    ecc_uncorrected: int | None
    retired_pending: bool | None


@dataclass(frozen=True)
class GpuReport:
    driver_version: str | None = None
    # The newest CUDA version the driver supports, not an installed toolkit.
    cuda_version: str | None = None
    gpus: list[GpuInfo] = field(default_factory=list)
    # Trouble with individual GPUs (lost ones) or output this parser did not recognise.
    problems: list[str] = field(default_factory=list)
    # Set when nothing could be learnt about any GPU: no nvidia-smi, no driver, broken NVML.
    error: str | None = None


@dataclass(frozen=True)
class NvidiaGpus(Fact):
    """The host's NVIDIA driver, CUDA version and GPUs; parses to a GpuReport."""

    def command(self) -> str:
        # nvidia-smi reports some failures on stderr, so it is kept. The snippet exits with the
        # query's status: 127 when nvidia-smi is missing, nvidia-smi's own code otherwise.
        return (
            f"{shlex.join(QUERY_ARGV)} 2>&1; rc=$?; "
            f"printf '\\n%s\\n' {shlex.quote(SEPARATOR)}; "
            f"{shlex.join(HEADER_ARGV)} 2>&1; exit $rc"
        )

    def parse(self, stdout: str, rc: int) -> GpuReport:
        if rc == 127:
            return GpuReport(error="nvidia-smi is not installed: the host has no NVIDIA driver")
        query, _, header = stdout.partition("\n" + SEPARATOR + "\n")
        gpus: list[GpuInfo] = []
        drivers: list[str] = []
        other: list[str] = []
        problems: list[str] = []
        for line in filter(None, (line.strip() for line in query.splitlines())):
            row = _parse_row(line)
            lost = _NO_HANDLE.match(line)
            if row:
                gpus.append(row[0])
                drivers.append(row[1])
            elif lost:
                problems.append(
                    f"GPU {lost['bus']} does not answer ({lost['reason']}): it has likely fallen "
                    "off the bus; look for Xid 79 in dmesg and reboot the host"
                )
            else:
                other.append(line)
        if rc != 0 and not gpus and not problems:
            message = other[0] if other else "no output"
            hint = f" ({_HINTS[rc]})" if rc in _HINTS else ""
            return GpuReport(error=f"nvidia-smi failed with exit status {rc}: {message}{hint}")
        headers = {m["key"]: m["value"].strip() for m in _HEADER_LINE.finditer(header)}
        return GpuReport(
            driver_version=drivers[0] if drivers else headers.get("Driver Version"),
            cuda_version=headers.get("CUDA Version"),
            gpus=gpus,
            problems=problems + [f"unexpected nvidia-smi output: {line}" for line in other],
        )


def _parse_row(line: str) -> tuple[GpuInfo, str] | None:
    """One CSV row of the query as (GpuInfo, driver version), or None if it is not one."""
    values = line.split(", ")
    if len(values) != len(QUERY_FIELDS) or not values[0].isdigit():
        return None
    index, name, uuid, bus_id, driver, memory, persistence, ecc, retired = values
    gpu = GpuInfo(
        index=int(index),
        name=name,
        uuid=uuid,
        bus_id=bus_id,
        memory_mib=_number(memory),
        persistence=_flag(persistence, "Enabled", "Disabled"),
        ecc_uncorrected=_number(ecc),
        retired_pending=_flag(retired, "Yes", "No"),
    )
    return gpu, driver


# nvidia-smi writes an unavailable value in brackets: "[N/A]", "[Not Supported]", "[Unknown Error]".
def _number(value: str) -> int | None:
    return int(value) if value.isdigit() else None


def _flag(value: str, true: str, false: str) -> bool | None:
    return {true: True, false: False}.get(value)
