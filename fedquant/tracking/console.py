"""Console output: one progress line per round (time, ETA, loss, accuracies) and the final table."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table


class ConsoleReporter:
    """Prints progress to stderr-free stdout via rich; ``quiet`` keeps only the final table."""

    def __init__(self, num_rounds: int, quiet: bool = False, console: Console | None = None) -> None:
        self.num_rounds = num_rounds
        self.quiet = quiet
        self.console = console or Console(highlight=False)
        self.start = self.last = time.perf_counter()
        self.recent: list[float] = []  # the last few round durations, for the ETA

    def round_done(self, server_round: int, train_loss: float | None, failures: int,
                   accuracies: dict[str, float] | None) -> None:
        now = time.perf_counter()
        took, self.last = now - self.last, now
        if self.quiet:
            return
        if server_round == 0:
            line = f"[bold]round 0/{self.num_rounds}[/] initial model"
        else:
            # ETA from the last (up to) 5 rounds: round 1 also carries Ray's start-up
            self.recent = (self.recent + [took])[-5:]
            if len(self.recent) > 1:
                eta = sum(self.recent[1:]) / len(self.recent[1:]) * (self.num_rounds - server_round)
                eta_text = f"{eta:5.0f} s"
            else:  # round 1 alone would extrapolate the start-up
                eta_text = "    - s"
            line = f"[bold]round {server_round}/{self.num_rounds}[/] {took:5.1f} s  ETA {eta_text}"
            if train_loss is not None:
                line += f"  train loss {train_loss:.4f}"
            if failures:
                line += f"  [red]{failures} client failure(s)[/]"
        if accuracies:
            line += "  " + " ".join(f"{k} {100 * v:.1f}" for k, v in accuracies.items())
        self.console.print(line, soft_wrap=True)

    def final_table(self, rounds: list[dict], settings: list[str], per_profile: dict, wall_time: float,
                    output_dir: str, protocol: dict | None = None) -> None:
        table = Table(title="Test accuracy (%) of the global model per evaluation setting")
        table.add_column("round", justify="right")
        for s in settings:
            table.add_column(s, justify="right")
        for r in rounds:
            if "eval" in r:
                table.add_row(str(r["round"]), *(f"{100 * r['eval'][s]['accuracy']:.2f}" for s in settings))
        self.console.print(table)
        for name, accs in per_profile.items():
            self.console.print(f"profile {name} (%): " + "  ".join(f"{k} {100 * v:.2f}" for k, v in accs.items()))
        if protocol:
            self.console.print(protocol_line(protocol))
        self.console.print(summary_lines(rounds, settings, wall_time, output_dir), soft_wrap=True)


def summary_lines(rounds: list[dict], settings: list[str], wall_time: float, output_dir: str) -> str:
    """The end of a run: the last evaluation in one line, and what was written where."""
    last = next((r for r in reversed(rounds) if "eval" in r), None)
    final = ("final test accuracy (%, round " + str(last["round"]) + "): "
             + " ".join(f"{s} {100 * last['eval'][s]['accuracy']:.2f}" for s in settings if s in last["eval"])
             if last else "no evaluation")
    return (f"{final}\nwall time {wall_time:.1f} s; written to {output_dir}: results.json (every number and the "
            "protocol), metrics.csv (per round), *.png (plots), checkpoint_r*.pt (resume_from=<this folder>, "
            "python -m fedquant.export / .reevaluate)")


def protocol_line(protocol: dict) -> str:
    """One line stating how the server evaluated (results.json ``protocol``)."""
    first_last = (f"first/last layers at {protocol['first_last_bits']} bits" if protocol["first_last_bits"]
                  else "every layer at the setting's bits")
    bias = f"; biases {protocol['bias']}" if "bias" in protocol else ""
    return (f"protocol: {first_last}; BatchNorm: {protocol['batchnorm']}; weight ranges {protocol['weight_range']}, "
            f"activation ranges {protocol['act_range']}; PTQ {protocol['ptq']}{bias}; "
            f"{protocol['calibration_samples']} calibration / {protocol['validation_samples']} validation images")
