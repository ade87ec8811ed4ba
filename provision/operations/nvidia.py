"""NVIDIA verification (drivers are never installed): per host, and GPU models across hosts;
which driver a CUDA build needs, and the checks a host's GPU report must pass."""

from __future__ import annotations

from dataclasses import dataclass

from provision.checks import CheckContext, cluster_check
from provision.errors import ProvisionError
from provision.facts.nvidia import GpuReport, NvidiaGpus
from provision.operations.base import FactValues, Failure, HostContext, NoChange, Skip, operation
from provision.plan import Status, TaskResult
from provision.settings import Setting


@dataclass(frozen=True)
class DriverRequirement:
    # The oldest driver that runs binaries built with this toolkit, under minor version
    # compatibility (CUDA 11.1+: one minimum per major version).
    minor_compat: str
    # The driver this toolkit's GA (x.y.0) release shipped with and fully supports.
    toolkit_ga: str


# Linux x86_64 driver versions from NVIDIA's CUDA Toolkit Release Notes
# (https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/): table "CUDA Toolkit and Minimum
# Required Driver Version for CUDA Minor Version Compatibility", and table "CUDA Toolkit and
# Corresponding Driver Versions" (GA rows). There was no CUDA 12.7.
_MINOR_COMPAT = {"11": "450.80.02", "12": "525.60.13", "13": "580.65.06"}
_TOOLKIT_GA = {
    "11.0": "450.51.05",
    "11.1": "455.23",
    "11.2": "460.27.03",
    "11.3": "465.19.01",
    "11.4": "470.42.01",
    "11.5": "495.29.05",
    "11.6": "510.39.01",
    "11.7": "515.43.04",
    "11.8": "520.61.05",
    "12.0": "525.60.13",
    "12.1": "530.30.02",
    "12.2": "535.54.03",
    "12.3": "545.23.06",
    "12.4": "550.54.14",
    "12.5": "555.42.02",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}
DRIVER_REQUIREMENTS = {
    cuda: DriverRequirement(_MINOR_COMPAT[cuda.split(".")[0]], ga)
    for cuda, ga in _TOOLKIT_GA.items()
}


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as driver version `a` is older than, the same as or newer than `b`.

    Parts compare as numbers ("535.104.05" is newer than "535.54.03"); missing parts count as 0.
    """
    left, right = _numbers(a), _numbers(b)
    width = max(len(left), len(right))
    left += (0,) * (width - len(left))
    right += (0,) * (width - len(right))
    return (left > right) - (left < right)


def min_driver_for_cuda(cuda: str) -> str:
    """The oldest Linux driver that runs code built with CUDA `cuda` ("12.1", or "12.1.105").

    PyTorch wheels and conda builds ship their own CUDA runtime, so the driver need not match the
    toolkit: minor version compatibility applies, and that minimum is what is enforced (the GA
    driver would reject working hosts, e.g. 535.x under a CUDA 12.4 build). CUDA 11.0 predates
    minor version compatibility and has the older minimum of its own GA driver.
    """
    parts = cuda.split(".")
    if len(parts) < 2 or not all(part.isdigit() for part in parts) or parts[0] not in _MINOR_COMPAT:
        known = ", ".join(f"{major}.x" for major in _MINOR_COMPAT)
        raise ProvisionError(f"no driver requirement known for CUDA {cuda!r} (known: {known})")
    requirement = DRIVER_REQUIREMENTS.get(f"{parts[0]}.{parts[1]}")
    if requirement is None:
        # A release newer than this table: NVIDIA keeps one minimum per major version.
        return _MINOR_COMPAT[parts[0]]
    return min(requirement.minor_compat, requirement.toolkit_ga, key=_numbers)


def check_gpus(report: GpuReport, expected_gpus: int, torch_cuda: str | None) -> list[str]:
    """What is wrong with a host's GPUs, in words; empty when they are fit to train on.

    `torch_cuda` is the CUDA version PyTorch was built with (torch.version.cuda), None for a
    CPU-only build.
    """
    if report.error:
        return [report.error]
    problems: list[str] = []
    if torch_cuda and report.driver_version:
        driver_problem = _driver_problem(report.driver_version, report.cuda_version, torch_cuda)
        problems += [driver_problem] if driver_problem else []
    if len(report.gpus) != expected_gpus:
        problems.append(f"expected {expected_gpus} GPUs, found {len(report.gpus)}")
    problems += report.problems
    for gpu in report.gpus:
        where = f"GPU {gpu.index} ({gpu.bus_id})"
        if gpu.ecc_uncorrected:
            problems.append(
                f"{where} has {gpu.ecc_uncorrected} uncorrectable ECC errors since the driver "
                "loaded: drain the host and reset the GPU"
            )
        if gpu.retired_pending:
            problems.append(
                f"{where} has retired memory pages pending: they take effect after a GPU reset "
                "or reboot"
            )
    return problems


def model_mismatch(reports: dict[str, GpuReport]) -> str | None:
    """A warning naming each GPU model and its hosts, when the hosts do not all have the same."""
    hosts_by_model: dict[str, list[str]] = {}
    for host, report in reports.items():
        for model in sorted({gpu.name for gpu in report.gpus}):
            hosts_by_model.setdefault(model, []).append(host)
    if len(hosts_by_model) < 2:
        return None
    models = "; ".join(
        f"{model} on {', '.join(hosts)}" for model, hosts in sorted(hosts_by_model.items())
    )
    return f"GPU models differ between hosts (training runs at the pace of the slowest): {models}"


def _driver_problem(driver: str, driver_cuda: str | None, torch_cuda: str) -> str | None:
    try:
        minimum = min_driver_for_cuda(torch_cuda)
        too_old = compare_versions(driver, minimum) < 0
    except ProvisionError as error:
        return f"cannot check the NVIDIA driver against PyTorch's CUDA: {error}"
    if not too_old:
        return None
    return (
        f"NVIDIA driver {driver} (CUDA {driver_cuda or 'unknown'}) is too old for PyTorch built "
        f"with CUDA {torch_cuda}: it needs driver {minimum} or newer"
    )


def _numbers(version: str) -> tuple[int, ...]:
    parts = version.split(".")
    if not all(part.isdigit() for part in parts):
        raise ProvisionError(f"not a driver version: {version!r}")
    return tuple(int(part) for part in parts)


@operation("nvidia_check", [Setting("gpus", "int", min=-1), Setting("torch_cuda", "str")],
           required=("gpus",), facts=lambda a: [NvidiaGpus()] if a["gpus"] > 0 else [])
def nvidia_check(args: dict, facts: FactValues, ctx: HostContext):
    """The driver runs, is new enough for torch's CUDA, and the host has `gpus` healthy GPUs."""
    if args["gpus"] == 0:
        return Skip("CPU-only host (gpus: 0)")
    if args["gpus"] < 0:
        return Failure("the inventory does not say how many GPUs this host has: set `gpus` "
                       "(0 for a CPU-only host)")
    report = facts[NvidiaGpus()]
    problems = check_gpus(report, args["gpus"], args.get("torch_cuda"))
    if problems:
        return Failure("; ".join(problems))
    names = sorted({g.name for g in report.gpus})
    return NoChange(f"{len(report.gpus)}x {', '.join(names)}, driver {report.driver_version}, "
                    f"CUDA {report.cuda_version}")


@cluster_check("gpu_models")
def gpu_models(ctx: CheckContext) -> list[TaskResult]:
    """Warn when training hosts carry different GPU models (they then train at the slowest's pace)."""
    gpu_hosts = {name: s for name, s in ctx.sessions.items() if ctx.variables[name].get("gpus")}
    if len(gpu_hosts) < 2:
        return []
    # The run's own readings (nvidia_check read them): no second round trip per GPU host.
    reports = {name: s.facts[NvidiaGpus()] if NvidiaGpus() in s.facts
               else s.gather([NvidiaGpus()])[NvidiaGpus()] for name, s in gpu_hosts.items()}
    mismatch = model_mismatch(reports)
    message = f"warning: {mismatch}" if mismatch else "every host has the same GPU model"
    return [TaskResult(name, ctx.role.name, "same GPU model", Status.OK, message)
            for name in reports]
