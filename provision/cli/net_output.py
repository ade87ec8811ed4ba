"""How `provision net` reports: the JSON document, and the terminal's tables and verdict."""

from __future__ import annotations

import click

from provision.cli.output import emit
from provision.netcheck.collective import CollectiveResult, size_label
from provision.netcheck.endpoint import NodeState
from provision.netcheck.plot import matrix
from provision.netcheck.verdict import Link, Verdict, rate, three_digits


def report_dict(nodes: dict[str, NodeState], measured: list[str], links: list[Link],
                verdict: Verdict, result: CollectiveResult | None, seconds: float,
                quick: bool) -> dict:
    return {
        "mode": "ring" if quick else "tournament",
        "seconds_per_direction": seconds,
        "threshold": verdict.threshold,
        "nodes": [state.as_dict() for state in nodes.values()],
        "links": [{"a": link.a, "b": link.b, "a_to_b_bps": link.forward_bps,
                   "b_to_a_bps": link.backward_bps, "rtt_ms": link.rtt_ms,
                   "problem": link.problem} for link in links],
        "matrix": {"nodes": measured, "unit": "Gbit/s", "rows_send_to_columns": True,
                   "values": matrix(measured, links)},
        "reference_bps": verdict.reference_bps,
        "reference_rtt_ms": verdict.reference_rtt_ms,
        "findings": [f.as_dict() for f in verdict.findings],
        "collective": result.as_dict() if result is not None else None,
    }


def _table(rows: list[list[str]], indent: str = "  ") -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        emit(indent + "  ".join(cell.rjust(w) if i else cell.ljust(w)
                                for i, (cell, w) in enumerate(zip(row, widths))).rstrip())


def _links(links: list[Link], verdict: Verdict) -> None:
    flags: dict[tuple[str, str], list[str]] = {}
    for finding in verdict.findings:
        for link in links:
            if set(finding.nodes) == {link.a, link.b} or (
                    len(finding.nodes) == 1 and link.touches(finding.nodes[0])):
                flags.setdefault((link.a, link.b), []).append(finding.kind)
    rows = [["link", "a -> b", "b -> a", "RTT ms", ""]]
    for link in links:
        rows.append([f"{link.a} - {link.b}",
                     rate(link.forward_bps) if link.forward_bps is not None else "-",
                     rate(link.backward_bps) if link.backward_bps is not None else "-",
                     f"{link.rtt_ms:.3f}" if link.rtt_ms is not None else "-",
                     ",".join(dict.fromkeys(flags.get((link.a, link.b), [])))])
    emit(click.style("pairwise", bold=True))
    _table(rows)


def _matrix(nodes: list[str], links: list[Link]) -> None:
    emit(click.style("matrix", bold=True) + " (Gbit/s, the row's node sends to the column's)")
    rows = [["", *nodes]]
    for node, line in zip(nodes, matrix(nodes, links)):
        rows.append([node, *("-" if v is None else three_digits(v) for v in line)])
    _table(rows)


def _collective(result: CollectiveResult, slowest_link: float | None) -> None:
    emit(click.style("all-reduce", bold=True)
         + (f" ({result.backend}, {result.samples[0].ranks} ranks; nccl-tests' busbw)"
            if result.samples else ""))
    if result.samples:
        rows = [["size", "time us", "algbw GB/s", "busbw GB/s"]]
        for s in result.samples:
            rows.append([size_label(s.size), three_digits(s.seconds * 1e6),
                         three_digits(s.algbw / 1e9), three_digits(s.busbw / 1e9)])
        _table(rows)
        largest = result.samples[-1]
        line = (f"  busbw at {size_label(largest.size)}: {rate(largest.busbw * 8)}")
        if slowest_link:
            line += f", {largest.busbw * 8 / slowest_link:.0%} of the slowest link"
        emit(line)
    if result.interrupted:
        emit("  interrupted")
    elif result.skipped:
        emit(f"  skipped: {result.skipped}")


def print_report(nodes: dict[str, NodeState], measured: list[str], links: list[Link],
                 verdict: Verdict, result: CollectiveResult | None, plot_path: str | None) -> None:
    if links:
        _links(links, verdict)
        _matrix(measured, links)
    if result is not None:
        figures = [link.bps for link in links if link.measured]
        _collective(result, min(figures) if figures else None)
    emit(click.style("verdict", bold=True) + (
        f" (reference {rate(verdict.reference_bps)}: the median of each node's fastest link; "
        f"threshold {verdict.threshold:.0%})" if verdict.reference_bps else ""))
    troubled = [state for state in nodes.values() if state.problem]
    for state in troubled:
        word, colour = ("UNREACHABLE", "magenta") if state.unreachable else ("NOT MEASURED", "red")
        # SSH's errors name the host already; the measuring program's do not.
        named = state.problem.startswith(f"{state.name}: ")
        emit(click.style(f"  {word} ", fg=colour)
             + (state.problem if named else f"{state.name}: {state.problem}"))
    for finding in verdict.findings:
        emit(click.style(f"  {finding.kind.upper()} ", fg="red") + finding.message)
    if result is not None and result.problem:
        emit(click.style("  ALL-REDUCE FAILED ", fg="red") + result.problem)
    if plot_path:
        emit(f"  heatmap written to {plot_path}")
    if not troubled and not verdict.flagged and not (result and (result.problem
                                                                 or result.interrupted)):
        emit(click.style("  no problem found", fg="green"))
