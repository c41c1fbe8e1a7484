"""report.md and report.csv: the tables of a report as text."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .runs import Methods
from .stats import Summary, mean_std
from .summary import Pairs, Table, curves, evaluations_used, shown_settings


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def cell(s: Summary) -> str:
    """``mean ± std`` in %; one run has no spread, so its cell is the value alone."""
    return f"{100 * s.mean:.2f}" if s.n == 1 else f"{100 * s.mean:.2f} ± {100 * s.std:.2f}"


def ptq_text(protocol: dict) -> str:
    """The PTQ method as recorded, saying "no bias correction" when it was off (a recorded PTQ
    always names bias correction when it was on)."""
    ptq = str(protocol.get("ptq", "not recorded"))
    if "bias correction" in ptq or "ptq" not in protocol:
        return ptq
    return f"{ptq}, no bias correction"


def post_training(run: dict) -> str:
    """The run's post-training options in one short line (plots): PTQ, bias correction, weight
    and activation ranges, biases; "(re-evaluated)" for a run of ``python -m fedquant.reevaluate``."""
    protocol = run.get("protocol")
    if not protocol:
        return "post-training options not recorded"
    bias = str(protocol.get("bias", "float"))
    text = (f"PTQ {ptq_text(protocol)}; weights {protocol.get('weight_range', '?')}, "
            f"activations {protocol.get('act_range', '?')}; {bias.split()[0]} biases")
    return f"{text} (re-evaluated)" if "reevaluated" in run else text


def protocol_sentence(protocol: dict | None) -> str:
    """One run's ``results["protocol"]`` as a sentence ("not recorded" for older runs)."""
    if not protocol:
        return "not recorded (results.json written before runs stated their protocol)"

    def get(key: str) -> str:
        return str(protocol.get(key, "not recorded"))

    if "first_last_bits" not in protocol:
        layers = "first/last-layer bits not recorded"
    elif protocol["first_last_bits"]:
        layers = (f"first and last layers at {protocol['first_last_bits']} bits, "
                  "the others at the evaluated bit-width")
    else:
        layers = "every layer at the evaluated bit-width"
    return (f"{layers}; BatchNorm: {get('batchnorm').rstrip('.')}; "
            f"weight ranges: {get('weight_range')}; activation ranges: {get('act_range')}; "
            f"PTQ: {ptq_text(protocol)}; "
            f"biases: {protocol.get('bias', 'float (evaluated before eval.integer_bias)')}; "
            f"calibration samples: {get('calibration_samples')}; "
            f"validation samples: {get('validation_samples')}.")


def protocol_markdown(methods: Methods) -> str:
    """The protocol all runs share, or the distinct protocols of each method."""
    per_method = {m: [json.dumps(r.get("protocol"), sort_keys=True) for r in runs]
                  for m, runs in methods.items()}
    distinct = {p for ps in per_method.values() for p in ps}
    if len(distinct) == 1:
        runs = sum(len(ps) for ps in per_method.values())
        lead = "The one run" if runs == 1 else f"All {runs} runs"
        return f"{lead}: {protocol_sentence(json.loads(distinct.pop()))}\n"
    lines = ["Protocols differ between runs:", ""]
    for method, protocols in per_method.items():
        for p in dict.fromkeys(protocols):
            lines.append(f"- `{method}` ({plural(protocols.count(p), 'run')}): "
                         + protocol_sentence(json.loads(p)))
    return "\n".join(lines) + "\n"


def averaged(last: int, used: dict[str, list[dict[str, int]]]) -> str:
    """What a run's figure averages, given the evaluations each run's figure used (``used``:
    method -> per run, setting -> count): "the mean of its last 3 evaluations", "the mean of its
    last 2 evaluations" (no run has 3), "its only evaluation", or the most, the fewer named."""
    counts = sorted({n for runs in used.values() for u in runs for n in u.values()}) or [last]
    most = counts[-1]
    if most == 1:
        text = "its last evaluation" if last == 1 else "its only evaluation"
    else:
        text = f"the mean of its last {most} evaluations"
    if len(counts) == 2:
        text += f" (of {counts[0]} where a run has only {counts[0]})"
    elif len(counts) > 2:
        text += f" (of {counts[0]}-{counts[-2]} where a run has fewer)"
    return text


def figure_rule(last: int, used: dict[str, list[dict[str, int]]]) -> str:
    """The figure definition (:func:`averaged`), and the methods with runs that have fewer than
    ``last`` evaluations (the fewest over a run's settings)."""
    text = (f"**Figure:** a run's figure at a setting is {averaged(last, used)} at rounds >= 1 "
            f"(`--last {last}`; round 0, the untrained model, never counts), separately for test "
            "and validation; a cell is the mean ± sample standard deviation of the figures over "
            "the method's seeds.\n")
    notes = []
    for method, runs in used.items():
        short = [n for n in (min(u.values()) for u in runs) if n < last]
        if short:
            lo, hi = min(short), max(short)
            counts = f"{lo}" if lo == hi else f"{lo}-{hi}"
            notes.append(f"`{method}`: {len(short)} of {plural(len(runs), 'run')} "
                         f"({counts} evaluation{'s' if hi > 1 else ''})")
    if notes:
        text += (f"\nFewer than {last} evaluations (the figure averages those the run has): "
                 + "; ".join(notes) + ".\n")
    return text


def to_markdown(table: Table, settings: list[str]) -> str:
    """``| method | seeds | setting... |`` with cells ``mean ± std`` in %."""
    lines = ["| method | seeds | " + " | ".join(settings) + " |",
             "|---|---|" + "---|" * len(settings)]
    for method, cells in table.items():
        n = max(c.n for c in cells.values())
        row = [cell(cells[s]) if s in cells else "" for s in settings]
        lines.append(f"| {method} | {n} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _points(x: float) -> str:
    return f"{100 * x:+.2f}"


def paired_markdown(pairs: Pairs, baseline: str, settings: list[str]) -> str:
    """One row per method and setting: A - B in points, its 95% interval, verdict, n."""
    lines = [f"\n## Paired test differences against `{baseline}` (percentage points)\n",
             f"A = the row's method, B = `{baseline}`; d = A − B per seed, over the seeds both "
             "have; mean d ± t(0.975, n−1) · sd(d) / √n; a verdict only where the 95% interval "
             "excludes 0.\n",
             "| method | setting | A − B | 95% interval | verdict | n |",
             "|---|---|---|---|---|---|"]
    for method, cells in pairs.items():
        for s in (s for s in settings if s in cells):
            p = cells[s]
            interval = f"[{_points(p.low)}, {_points(p.high)}]" if p.n > 1 else "—"
            diff = _points(p.mean) if p.n else "—"
            lines.append(f"| {method} | {s} | {diff} | {interval} | {p.verdict} | {p.n} |")
    if not pairs:
        lines.append("| (no other method) | | | | | |")
    return "\n".join(lines) + "\n"


def profiles_markdown(methods: Methods) -> str:
    """Mean +- std final test accuracy of each device profile at each setting it deploys
    ('' without profiles)."""
    lines = []
    for method, runs in methods.items():
        cells: dict[tuple[str, str], list[float]] = {}
        for run in runs:
            for profile, accs in (run.get("per_profile") or {}).items():
                for setting, acc in accs.items():
                    cells.setdefault((profile, setting), []).append(acc)
        for (profile, setting), values in cells.items():
            s = mean_std(values)
            lines.append(f"| {method} | {profile} | {setting} | {cell(s)} |")
    if not lines:
        return ""
    return ("\n## Per device profile (final test accuracy)\n\n"
            "| method | profile | setting | accuracy |\n|---|---|---|---|\n"
            + "\n".join(lines) + "\n")


def rounds_markdown(curve: dict[str, dict[int, dict[str, float]]], shown: list[str]) -> str:
    """Test accuracy per evaluated round (mean over seeds), cells ``a / b / ...`` for ``shown``."""
    rounds = sorted({r for per_round in curve.values() for r in per_round})
    if not rounds:
        return ""
    lines = [f"\n## Test accuracy per round (mean over seeds; {' / '.join(shown)})\n",
             "| method | " + " | ".join(str(r) for r in rounds) + " |",
             "|---|" + "---|" * len(rounds)]
    for method, per_round in curve.items():
        cells = [" / ".join(f"{100 * per_round[r][s]:.1f}" for s in shown
                            if s in per_round.get(r, {})) for r in rounds]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _minutes(seconds: list[float], what: str) -> str:
    """One job: its <what> in minutes; several: their sum and the range per job."""
    if len(seconds) == 1:
        return f"its {what} was {seconds[0] / 60:.1f} min"
    return (f"their {what}s sum to {sum(seconds) / 60:.1f} min "
            f"({min(seconds):.0f}-{max(seconds):.0f} s per job)")


def wall_time_line(methods: Methods) -> str:
    """The jobs' training wall time (a re-evaluated run's ``training_wall_time_s``) and, for
    re-evaluated runs, the re-evaluation's own (``wall_time_s``)."""
    runs = [r for rs in methods.values() for r in rs]
    redone = [r for r in runs if "reevaluated" in r]
    training = [r.get("training_wall_time_s", r.get("wall_time_s")) for r in runs]
    training = [t for t in training if t is not None]
    if not training:
        return ""
    jobs = plural(len(training), "job")
    if not redone:
        return f"\n{jobs}; {_minutes(training, 'wall time')}.\n"
    again = [r["wall_time_s"] for r in redone if "wall_time_s" in r]
    line = f"\n{jobs}; {_minutes(training, 'training wall time')}"
    if again:
        line += f"; re-evaluating {plural(len(again), 'job')} took {sum(again) / 60:.1f} min"
    return line + ".\n"


def reevaluated_markdown(methods: Methods) -> str:
    """For runs from ``python -m fedquant.reevaluate``: the options given there and the rounds
    of the checkpoints re-evaluated ('' when no run was re-evaluated)."""
    lines = []
    for method, runs in methods.items():
        for options in dict.fromkeys(_reevaluation(r) for r in runs if "reevaluated" in r):
            n = sum(_reevaluation(r) == options for r in runs if "reevaluated" in r)
            lines.append(f"- `{method}` ({plural(n, 'run')}): {options}")
    if not lines:
        return ""
    return ("\nRe-evaluated without retraining (`python -m fedquant.reevaluate`; the protocol "
            "above is the re-evaluation's):\n\n" + "\n".join(lines) + "\n")


def _reevaluation(run: dict) -> str:
    """The options a re-evaluation was given and the checkpoint rounds, as text."""
    options = {k: v for k, v in run["reevaluated"].items() if k != "checkpoints"}
    given = (", ".join(f"eval.{k}={_option(v)}" for k, v in options.items())
             or "the run's own options")
    rounds = ", ".join(str(r["round"]) for r in run.get("rounds", []))
    return f"{given} (the others as the run had them); the models of rounds {rounds}"


def _option(value: object) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


# ---------------------------------------------------------------------------------------- csv

CSV_COLUMNS = ["method", "setting", "mean_accuracy", "std_accuracy", "seeds", "last_k",
               "min_evaluations", "val_mean_accuracy", "val_std_accuracy", "val_seeds", "baseline",
               "paired_diff", "paired_ci_low", "paired_ci_high", "paired_verdict", "paired_seeds"]


def to_csv(test: Table, validation: Table, pairs: Pairs, last: int,
           used: dict[str, list[dict[str, int]]], baseline: str | None = None) -> str:
    """One row per method and setting (:data:`CSV_COLUMNS`): accuracies and differences as
    fractions, ``min_evaluations`` the fewest test evaluations a run's figure averaged; empty
    cells where there is no validation split or no pairing."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for method, cells in test.items():
        for setting, t in cells.items():
            v = validation.get(method, {}).get(setting)
            p = pairs.get(method, {}).get(setting)
            fewest = min(u[setting] for u in used[method] if setting in u)
            writer.writerow([method, setting, t.mean, t.std, t.n, last, fewest,
                             *((v.mean, v.std, v.n) if v else ("",) * 3), baseline or "",
                             *((p.mean, p.low, p.high, p.verdict, p.n) if p else ("",) * 5)])
    return buf.getvalue()


def mixed_precision_markdown(methods: Methods) -> str:
    """Each run's mixed-precision assignment per budget: bits per layer, bytes against the budget
    ('' without budgets)."""
    lines, measure = [], ""
    for method, runs in methods.items():
        for run in runs:
            assignments = dict(run.get("mixed_precision") or {})
            measure = assignments.pop("measure", measure)
            seed = run.get("config", {}).get("seed", "?")
            for name, a in assignments.items():
                layers = ", ".join(f"{layer} {bits}" for layer, bits in zip(a["layers"], a["bits"], strict=True))
                lines.append(f"| {method} | {seed} | {name} | {layers} | {a['model_bytes']:,} / {a['budget_bytes']:,} |")
    if not lines:
        return ""
    return ("\n## Mixed precision (the server's assignment at the final evaluation)\n\n" + measure + ".\n\n"
            "| method | seed | budget | bits per layer | bytes / budget |\n|---|---|---|---|---|\n"
            + "\n".join(lines) + "\n")


def report_markdown(methods: Methods, missing: list[Path], last: int, test: Table,
                    validation: Table, baseline: str | None, pairs: Pairs) -> str:
    """report.md: protocol and figure rule, test, validation, paired, per-profile and per-round
    tables, wall time and missing jobs."""
    settings = list(dict.fromkeys(s for cells in test.values() for s in cells))
    text = ("## Protocol\n\n" + protocol_markdown(methods) + reevaluated_markdown(methods) + "\n"
            + figure_rule(last, evaluations_used(methods, last))
            + "\n## Test accuracy (%)\n\n" + to_markdown(test, settings))
    if validation:
        shown = [s for s in settings if any(s in c for c in validation.values())]
        text += ("\n## Validation accuracy (%): choices are made on this table; "
                 "test is only reported\n\n" + to_markdown(validation, shown))
    if baseline is not None:
        text += paired_markdown(pairs, baseline, settings)
    text += profiles_markdown(methods) + mixed_precision_markdown(methods) + rounds_markdown(curves(methods), shown_settings(settings))
    text += wall_time_line(methods)
    if missing:
        text += ("\nJobs without results (failed or unfinished): "
                 + ", ".join(str(m) for m in missing) + "\n")
    return text
