"""--plot: the matrix behind the heatmap, and the PNG itself where matplotlib is installed."""

from __future__ import annotations

import pytest

from provision.netcheck import plot
from provision.netcheck.verdict import Link, judge


def links() -> list[Link]:
    return [Link("a", "b", 9.4e9, 9.3e9, 0.05), Link("a", "c", 0.02e9, 9.4e9, 0.05),
            Link("b", "c", 9.2e9, 9.1e9, 0.05), Link("a", "d", problem="refused"),
            Link("b", "d", 9e9, 9e9, 0.05), Link("c", "d", 9e9, 9e9, 0.05)]


def test_matrix_rows_send_to_columns_in_gbit_per_s():
    assert plot.matrix(["a", "b", "c", "d"], links()) == [
        [None, 9.4, 0.02, None],
        [9.3, None, 9.2, 9.0],
        [9.4, 9.1, None, 9.0],
        [None, 9.0, 9.0, None]]


def test_heatmap_is_a_png_with_the_flagged_cells(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    nodes = ["a", "b", "c", "d"]
    verdict = judge(nodes, links(), 0.5)
    assert {cell for f in verdict.findings for cell in f.cells} >= {("a", "c")}
    path = tmp_path / "net.png"
    plot.write_heatmap(path, nodes, links(), verdict)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
