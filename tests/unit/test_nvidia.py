"""The nvidia-smi fact parser, the driver table and GPU checks, and the nvidia-smi test double."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.facts.base import batch_script, split_batch_output
from provision.facts.nvidia import HEADER_ARGV, QUERY_ARGV, SEPARATOR, GpuReport, NvidiaGpus
from provision.operations.nvidia import (
    DRIVER_REQUIREMENTS,
    check_gpus,
    compare_versions,
    min_driver_for_cuda,
    model_mismatch,
)

TESTS = Path(__file__).resolve().parent.parent
FIXTURES = TESTS / "fixtures" / "nvidia"
DOUBLE = TESTS / "doubles" / "nvidia-smi"


@dataclass(frozen=True)
class Expected:
    rc: int
    driver: str | None = None
    cuda: str | None = None
    indexes: tuple[int, ...] = ()
    model: str | None = None
    memory_mib: int | None = None
    problem: str | None = None  # a word every problem must contain (none expected when None)
    error: str | None = None


EXPECTED = {
    "a100x8": Expected(0, "535.104.05", "12.2", tuple(range(8)), "NVIDIA A100-SXM4-80GB", 81920),
    "h100x8": Expected(0, "550.54.15", "12.4", tuple(range(8)), "NVIDIA H100 80GB HBM3", 81559),
    "a6000x4": Expected(0, "470.57.02", "11.4", tuple(range(4)), "NVIDIA RTX A6000", 49140),
    "t4x1": Expected(0, "545.23.08", "12.3", (0,), "Tesla T4", 15360),
    "ecc-errors": Expected(0, "525.85.12", "12.0", tuple(range(8)), "Tesla V100-SXM2-32GB", 32768),
    "lost-gpu": Expected(
        15, "525.85.12", "12.0", (0, 1, 2, 4, 5, 6, 7), "NVIDIA A100-SXM4-40GB", 40960,
        problem="0000:4E:00.0",
    ),
    "no-driver": Expected(9, error="couldn't communicate with the NVIDIA driver"),
    "driver-mismatch": Expected(18, error="Driver/library version mismatch"),
    "not-installed": Expected(127, error="not installed"),
}


def fixture_output(scenario: str) -> tuple[str, int]:
    """What NvidiaGpus' snippet prints on a host that gave these captures, and its status."""
    directory = FIXTURES / scenario
    query = (directory / "query-gpu.txt").read_text()
    header = (directory / "q-compute.txt").read_text()
    return f"{query}\n{SEPARATOR}\n{header}", int((directory / "exit-status").read_text())


def fixture_report(scenario: str) -> GpuReport:
    return NvidiaGpus().parse(*fixture_output(scenario))


def assert_matches(report: GpuReport, expected: Expected) -> None:
    if expected.error:
        assert report.error and expected.error in report.error
        assert report.gpus == []
        return
    assert report.error is None
    assert (report.driver_version, report.cuda_version) == (expected.driver, expected.cuda)
    assert tuple(gpu.index for gpu in report.gpus) == expected.indexes
    assert {gpu.name for gpu in report.gpus} == {expected.model}
    assert {gpu.memory_mib for gpu in report.gpus} == {expected.memory_mib}
    assert len({gpu.uuid for gpu in report.gpus}) == len(report.gpus)
    assert all(gpu.uuid.startswith("GPU-") for gpu in report.gpus)
    if expected.problem is None:
        assert report.problems == []
    else:
        assert report.problems and all(expected.problem in p for p in report.problems)


def run_double(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(DOUBLE), *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def run_snippet(script: str, scenario: str | None) -> subprocess.CompletedProcess:
    """Run sh code with the double first on PATH, as a lab host configured for `scenario` would."""
    env = {**os.environ, "PATH": f"{DOUBLE.parent}:{os.environ['PATH']}"}
    env.pop("PROVISION_NVIDIA_SCENARIO", None)
    if scenario:
        env["PROVISION_NVIDIA_SCENARIO"] = scenario
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env)


# --- the parser, over output captured from real hosts ---


def test_every_fixture_has_an_expectation():
    assert {path.name for path in FIXTURES.iterdir()} == set(EXPECTED)


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_parse_fixture(scenario):
    stdout, rc = fixture_output(scenario)
    assert rc == EXPECTED[scenario].rc
    assert_matches(NvidiaGpus().parse(stdout, rc), EXPECTED[scenario])


def test_parse_reads_every_field():
    gpu = fixture_report("a100x8").gpus[1]
    assert (gpu.index, gpu.bus_id, gpu.persistence) == (1, "00000000:0F:00.0", True)
    # A100 reports ECC errors but replaced page retirement with row remapping: "[N/A]".
    assert (gpu.ecc_uncorrected, gpu.retired_pending) == (0, None)
    a6000 = fixture_report("a6000x4").gpus[0]
    assert (a6000.persistence, a6000.ecc_uncorrected) == (False, None)


def test_parse_finds_the_faulty_gpu():
    faulty = [gpu for gpu in fixture_report("ecc-errors").gpus if gpu.ecc_uncorrected]
    assert [(gpu.index, gpu.ecc_uncorrected, gpu.retired_pending) for gpu in faulty] == [
        (5, 2, True)
    ]


def test_parse_reports_output_it_does_not_recognise():
    stdout, rc = fixture_output("t4x1")
    report = NvidiaGpus().parse("WARNING: infoROM is corrupted at gpu 0000:00:1E.0\n" + stdout, rc)
    assert len(report.gpus) == 1
    assert report.problems == [
        "unexpected nvidia-smi output: WARNING: infoROM is corrupted at gpu 0000:00:1E.0"
    ]


# --- the double, run for real and read by the same parser ---


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_double_and_parser_agree(scenario):
    result = run_snippet(NvidiaGpus().command(), scenario)
    assert result.returncode == EXPECTED[scenario].rc
    report = NvidiaGpus().parse(result.stdout, result.returncode)
    assert_matches(report, EXPECTED[scenario])
    assert report == fixture_report(scenario)


def test_fact_through_batch_script():
    script, marker = batch_script([NvidiaGpus()])
    result = run_snippet(script, "lost-gpu")
    [(stdout, rc)] = split_batch_output(result.stdout, marker, 1)
    assert_matches(NvidiaGpus().parse(stdout, rc), EXPECTED["lost-gpu"])


def test_host_without_nvidia_smi():
    result = subprocess.run(
        ["/bin/sh", "-c", NvidiaGpus().command()], capture_output=True, text=True,
        env={"PATH": "/nonexistent"},
    )
    assert result.returncode == 127
    assert_matches(NvidiaGpus().parse(result.stdout, 127), EXPECTED["not-installed"])


def test_double_without_scenario_is_not_installed():
    if Path("/etc/provision-doubles/nvidia-smi").exists():
        pytest.skip("this machine configures the double in /etc")
    result = run_snippet(NvidiaGpus().command(), None)
    assert result.returncode == 127
    assert_matches(NvidiaGpus().parse(result.stdout, 127), EXPECTED["not-installed"])


@pytest.mark.parametrize("args", [["--bogus"], ["-q", "--bogus"], [QUERY_ARGV[1], "--csv"]])
def test_double_refuses_unknown_arguments(args):
    result = run_double(*args, env={"PROVISION_NVIDIA_SCENARIO": "a100x8"})
    assert result.returncode == 2
    assert result.stdout == (
        "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.\n"
    )


def test_double_does_not_invent_uncaptured_output():
    result = run_double("--query-gpu=index,name", "--format=csv", env={
        "PROVISION_NVIDIA_SCENARIO": "a100x8"
    })
    assert result.returncode == 255
    assert result.stdout == "" and "nothing captured" in result.stderr


def test_double_refuses_unknown_scenario():
    result = run_double(*HEADER_ARGV[1:], env={"PROVISION_NVIDIA_SCENARIO": "no-such-host"})
    assert result.returncode == 255
    assert "no-such-host" in result.stderr


def test_double_reads_fixtures_from_another_directory(tmp_path):
    shutil.copytree(FIXTURES / "t4x1", tmp_path / "t4-old-driver")
    query = tmp_path / "t4-old-driver" / "query-gpu.txt"
    query.write_text(query.read_text().replace("545.23.08", "450.80.02"))
    result = run_double(*QUERY_ARGV[1:], env={
        "PROVISION_NVIDIA_SCENARIO": "t4-old-driver", "PROVISION_NVIDIA_FIXTURES": str(tmp_path)
    })
    assert result.returncode == 0 and ", 450.80.02, " in result.stdout


# --- driver versions ---


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("535.104.05", "525.60.13", 1),
        ("470.57.02", "525.60.13", -1),
        ("525.60.13", "525.60.13", 0),
        ("535.104.05", "535.54.03", 1),  # 104 > 54 as numbers, not as text
        ("525.60.9", "525.60.13", -1),
        ("570.26", "570.26.00", 0),
        ("450.80.02", "450.80", 1),
    ],
)
def test_compare_versions(a, b, expected):
    assert compare_versions(a, b) == expected
    assert compare_versions(b, a) == -expected


@pytest.mark.parametrize("bad", ["N/A", "", "535.x.1", "[N/A]"])
def test_compare_versions_rejects_non_versions(bad):
    with pytest.raises(ProvisionError):
        compare_versions(bad, "525.60.13")


@pytest.mark.parametrize(
    "cuda, minimum",
    [
        ("12.1", "525.60.13"),
        ("12.8", "525.60.13"),
        ("12.4.1", "525.60.13"),
        ("12.10", "525.60.13"),  # newer than the table: still CUDA 12's minimum
        ("11.8", "450.80.02"),
        ("11.0", "450.51.05"),  # before minor version compatibility: its own GA driver
        ("13.0", "580.65.06"),
    ],
)
def test_min_driver_for_cuda(cuda, minimum):
    assert min_driver_for_cuda(cuda) == minimum


@pytest.mark.parametrize("cuda", ["10.2", "12", "cu121", "", "12.1-rc"])
def test_min_driver_for_unknown_cuda(cuda):
    with pytest.raises(ProvisionError, match="no driver requirement known"):
        min_driver_for_cuda(cuda)


def test_driver_table_is_ordered():
    versions = sorted(DRIVER_REQUIREMENTS, key=lambda v: tuple(map(int, v.split("."))))
    gas = [DRIVER_REQUIREMENTS[v].toolkit_ga for v in versions]
    assert all(compare_versions(old, new) < 0 for old, new in zip(gas, gas[1:], strict=False))
    assert {"11.8", "12.0", "12.1", "12.2", "12.3", "12.4", "12.5", "12.6", "12.8"} <= set(versions)
    for cuda, requirement in DRIVER_REQUIREMENTS.items():
        if cuda != "11.0":
            assert compare_versions(requirement.minor_compat, requirement.toolkit_ga) <= 0, cuda


# --- checks over a host's report ---


@pytest.mark.parametrize(
    "scenario, expected_gpus, torch_cuda",
    [
        ("a100x8", 8, "12.1"),
        ("a100x8", 8, "12.8"),  # 535 < 12.8's GA driver, fine under minor version compatibility
        ("h100x8", 8, "12.4"),
        ("t4x1", 1, None),
        ("a6000x4", 4, "11.8"),
        ("a6000x4", 4, None),  # CPU-only torch needs no particular driver
    ],
)
def test_check_gpus_passes(scenario, expected_gpus, torch_cuda):
    assert check_gpus(fixture_report(scenario), expected_gpus, torch_cuda) == []


def test_check_gpus_old_driver():
    [problem] = check_gpus(fixture_report("a6000x4"), 4, "12.1")
    for words in ("470.57.02", "CUDA 11.4", "CUDA 12.1", "525.60.13", "too old"):
        assert words in problem


def test_check_gpus_count_mismatch():
    assert check_gpus(fixture_report("a100x8"), 4, "12.1") == ["expected 4 GPUs, found 8"]


def test_check_gpus_lost_gpu():
    problems = check_gpus(fixture_report("lost-gpu"), 8, "12.1")
    assert problems[0] == "expected 8 GPUs, found 7"
    assert len(problems) == 2 and "0000:4E:00.0" in problems[1] and "reboot" in problems[1]


def test_check_gpus_ecc_and_retired_pages():
    problems = check_gpus(fixture_report("ecc-errors"), 8, "12.1")
    assert len(problems) == 2
    assert all("GPU 5 (00000000:86:00.0)" in problem for problem in problems)
    assert "2 uncorrectable ECC errors" in problems[0]
    assert "retired memory pages pending" in problems[1]


@pytest.mark.parametrize("scenario", ["no-driver", "driver-mismatch", "not-installed"])
def test_check_gpus_without_a_working_driver(scenario):
    report = fixture_report(scenario)
    assert check_gpus(report, 8, "12.1") == [report.error]


def test_check_gpus_unknown_torch_cuda():
    [problem] = check_gpus(fixture_report("t4x1"), 1, "10.2")
    assert "cannot check" in problem and "10.2" in problem


def test_model_mismatch():
    a100, h100 = fixture_report("a100x8"), fixture_report("h100x8")
    assert model_mismatch({"node1": a100, "node2": a100}) is None
    assert model_mismatch({"node1": a100, "broken": fixture_report("no-driver")}) is None
    warning = model_mismatch({"node1": a100, "node2": h100, "node3": a100})
    assert warning is not None
    assert "NVIDIA A100-SXM4-80GB on node1, node3" in warning
    assert "NVIDIA H100 80GB HBM3 on node2" in warning


class GpuSession:
    """A host of the run for the cross-host check: what the run read there, its round trips."""

    def __init__(self, name: str, gpus: int, facts: dict):
        self.gpus = gpus
        self.facts = facts
        self.round_trips = 0

    def gather(self, facts):
        self.round_trips += 1
        return {fact: fixture_report("t4x1") for fact in facts}


def test_gpu_models_reads_the_runs_facts_without_another_round_trip():
    from provision.checks import CheckContext
    from provision.operations.nvidia import gpu_models
    role = type("Role", (), {"name": "nvidia"})()
    sessions = {"g1": GpuSession("g1", 8, {NvidiaGpus(): fixture_report("a100x8")}),
                "g2": GpuSession("g2", 8, {NvidiaGpus(): fixture_report("h100x8")}),
                "g3": GpuSession("g3", 1, {})}          # not read yet: read once
    results = gpu_models(CheckContext(sessions, None, role, False,
                                      {name: {"gpus": s.gpus} for name, s in sessions.items()}))
    assert [s.round_trips for s in sessions.values()] == [0, 0, 1]
    assert {r.host for r in results} == {"g1", "g2", "g3"}
    assert all("warning" in r.message for r in results)
