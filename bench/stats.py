"""The pure parts of the benchmarks: summaries of runs, ratios and the table."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    n: int

    def text(self, unit: str = "s", digits: int = 2) -> str:
        if self.n == 0:
            return "-"
        middle = f"{self.median:.{digits}f}{unit}"
        if self.n == 1:
            return middle
        return f"{middle} ({self.low:.{digits}f}-{self.high:.{digits}f})"


def summarize(values: list[float]) -> Summary:
    """Median, min and max of the runs (n = 0 for none)."""
    clean = [float(v) for v in values if v is not None]
    if not clean:
        return Summary(float("nan"), float("nan"), float("nan"), 0)
    return Summary(statistics.median(clean), min(clean), max(clean), len(clean))


def ratio(numerator: list[float], denominator: list[float]) -> float | None:
    """median(numerator) / median(denominator), None when either side has no runs or is 0."""
    top, bottom = summarize(numerator), summarize(denominator)
    if top.n == 0 or bottom.n == 0 or bottom.median == 0:
        return None
    return top.median / bottom.median


def differences(values: list[float], baseline: list[float]) -> list[float]:
    """Each run minus the baseline's median (launch overhead over plain torchrun)."""
    base = summarize(baseline)
    if base.n == 0:
        return []
    return [v - base.median for v in values if v is not None]


def verdict(value: float | None, target: float, lower_is_better: bool = True) -> str:
    """'ok' / 'MISSED' against a target, '-' without a value. Informational only."""
    if value is None:
        return "-"
    good = value <= target if lower_is_better else value >= target
    return "ok" if good else "MISSED"


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with columns padded to their widest cell."""
    cells = [list(map(str, header))] + [[str(c) for c in row] + [""] * (len(header) - len(row))
                                       for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, cells[1:])])
