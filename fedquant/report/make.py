"""One report: collect the runs, compute the tables, write :data:`REPORT_FILES`."""

from __future__ import annotations

from pathlib import Path

from ..files import write_text_atomic
from .plots import write_plots
from .runs import ReportError, collect
from .summary import evaluations_used, paired, summarize
from .tables import report_markdown, to_csv

REPORT_FILES = ("report.md", "report.csv", "report.png", "report_rounds.png")  # + report_uplink.png when bytes were counted


def report_dir(roots: list[Path], out: Path | None) -> Path:
    """Where the report goes: ``out``, else the one folder given."""
    if out is None and len(roots) > 1:
        raise ReportError("several sweeps given: say where the combined report goes with --out DIR")
    return out or roots[0]


def make_report(roots: list[Path], out: Path | None = None, *, last: int = 3,
                baseline: str | None = None) -> str:
    """Writes :data:`REPORT_FILES` to :func:`report_dir` and returns report.md's text."""
    if last < 1:
        raise ReportError(f"--last must be at least 1, got {last}")
    methods, missing = collect(roots)
    if not methods:
        where = " ".join(str(r) for r in roots)
        raise ReportError(f"no results.json under {where}: pass the directory of a finished sweep "
                          "(multirun/<date>/<time>)")
    out = report_dir(roots, out)
    pairs = paired(methods, baseline, last) if baseline is not None else {}
    test, validation = summarize(methods, last), summarize(methods, last, "validation")
    markdown = report_markdown(methods, missing, last, test, validation, baseline, pairs)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "report.md", markdown)
    write_text_atomic(out / "report.csv", to_csv(test, validation, pairs, last,
                                                 evaluations_used(methods, last), baseline))
    write_plots(methods, test, last, out, roots[0].name if len(roots) == 1 else out.name)
    return markdown
