"""`--plot FILE.png`: a heatmap of the pairwise matrix, the flagged figures outlined.

matplotlib is an optional extra (`pip install 'provision[plot]'`); without it, `available()`
says so before anything is measured.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from provision.netcheck.verdict import Link, Verdict

INSTALL_HINT = "--plot needs matplotlib: pip install 'provision[plot]' (or: pip install matplotlib)"


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def matrix(nodes: list[str], links: list[Link]) -> list[list[float | None]]:
    """Gbit/s from the row's node to the column's; None where there is no figure."""
    index = {node: i for i, node in enumerate(nodes)}
    cells: list[list[float | None]] = [[None] * len(nodes) for _ in nodes]
    for link in links:
        if link.a in index and link.b in index:
            for (sender, receiver), bps in (((link.a, link.b), link.forward_bps),
                                            ((link.b, link.a), link.backward_bps)):
                if bps is not None:
                    cells[index[sender]][index[receiver]] = bps / 1e9
    return cells


def write_heatmap(path: Path, nodes: list[str], links: list[Link], verdict: Verdict) -> None:
    import matplotlib
    matplotlib.use("Agg")        # a file, never a window
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cells = matrix(nodes, links)
    values = [[float("nan") if v is None else v for v in row] for row in cells]
    size = max(4.0, 0.5 * len(nodes) + 2.5)
    figure, axes = plt.subplots(figsize=(size + 1.2, size))
    image = axes.imshow(values, cmap="viridis", vmin=0)
    figure.colorbar(image, ax=axes, label="Gbit/s (row sends to column)")
    axes.set_xticks(range(len(nodes)), nodes, rotation=90)
    axes.set_yticks(range(len(nodes)), nodes)
    axes.set_xlabel("receiver")
    axes.set_ylabel("sender")
    axes.set_facecolor("#dddddd")          # cells without a figure
    if len(nodes) <= 16:
        top = max((v for row in cells for v in row if v is not None), default=0)
        for row, line in enumerate(cells):
            for column, value in enumerate(line):
                if row == column:
                    continue
                # Dark text on viridis' bright end, light text on its dark end.
                text, colour = ("n/a", "black") if value is None else \
                    (f"{value:.3g}", "black" if value > 0.6 * top else "white")
                axes.text(column, row, text, ha="center", va="center", fontsize=8,
                          color=colour)
    index = {node: i for i, node in enumerate(nodes)}
    flagged = {cell for finding in verdict.findings for cell in finding.cells}
    for sender, receiver in flagged:
        if sender in index and receiver in index:
            axes.add_patch(Rectangle((index[receiver] - 0.5, index[sender] - 0.5), 1, 1,
                                     fill=False, edgecolor="red", linewidth=2.5))
    problems = len(verdict.findings)
    axes.set_title(f"provision net: {problems} problem(s)" if problems
                   else "provision net: no problem found")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
