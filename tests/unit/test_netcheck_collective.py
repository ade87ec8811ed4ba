"""The all-reduce sweep's pure parts: sizes, nccl-tests' bandwidths, rank 0's result lines."""

from __future__ import annotations

import pytest

from provision.netcheck.allreduce import PREFIX
from provision.netcheck.collective import (Sample, bus_bandwidth, parse_lines, parse_size,
                                           size_label, sweep_args)


@pytest.mark.parametrize("text, size", [
    ("1K", 1024), ("64M", 64 << 20), ("64MiB", 64 << 20), ("4096", 4096), ("2g", 2 << 30),
    ("512 KiB", 512 << 10), ("8B", 8)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "1T", "-1K", "K", "1.5M", "64 MB extra"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize("size, label", [(1024, "1 KiB"), (64 << 20, "64 MiB"), (1536, "1536 B"),
                                         (1 << 30, "1 GiB")])
def test_size_label(size, label):
    assert size_label(size) == label


@pytest.mark.parametrize("ranks, factor", [(1, 0.0), (2, 1.0), (4, 1.5), (8, 1.75), (16, 1.875)])
def test_bus_bandwidth_is_nccl_tests_all_reduce_factor(ranks, factor):
    # nccl-tests doc/PERFORMANCE.md: busbw = algbw * 2(n-1)/n for all-reduce.
    assert bus_bandwidth(10.0, ranks) == pytest.approx(10.0 * factor)


def test_sample_bandwidths():
    sample = Sample(size=64 << 20, seconds=0.01, ranks=4)
    assert sample.algbw == pytest.approx((64 << 20) / 0.01)
    assert sample.busbw == pytest.approx(sample.algbw * 1.5)


def test_parse_lines_reads_rank_0_results_and_skips_the_rest():
    lines = [
        "W1203 torch noise",
        PREFIX + '{"bytes": 1024, "seconds": 0.0001, "world": 3, "backend": "gloo"}',
        PREFIX + "{not json",
        PREFIX + '{"bytes": 2048, "seconds": 0, "world": 3}',       # no time: no bandwidth
        PREFIX + '{"bytes": 4096, "seconds": 0.0002, "world": 3, "backend": "gloo"}',
    ]
    samples, backend = parse_lines(lines)
    assert [(s.size, s.ranks) for s in samples] == [(1024, 3), (4096, 3)]
    assert backend == "gloo"


def test_sweep_args():
    assert sweep_args(1024, 1 << 20, 8) == ["--min-bytes=1024", "--max-bytes=1048576",
                                            "--iters=8", "--warmup=2"]
    assert sweep_args(1024, 2048, 1)[-1] == "--warmup=1"
