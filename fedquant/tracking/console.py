"""Console output: one line per round (time, ETA, loss, accuracies), the progress of the round
running (:mod:`fedquant.tracking.progress`) and the final table."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .progress import Progress, seconds


class ConsoleReporter:
    """Prints to stdout via rich: a line per round and, while a round runs, its progress (clients
    replied, the setting being evaluated); ``quiet`` keeps only the final table."""

    def __init__(self, num_rounds: int, quiet: bool = False, console: Console | None = None,
                 clock: Callable[[], float] = time.perf_counter, progress: Progress | None = None) -> None:
        self.num_rounds = num_rounds
        self.quiet = quiet
        self.console = console or Console(highlight=False)
        self.clock = clock
        self.start = self.last = clock()
        self.recent: list[float] = []  # the last few round durations, for the ETA
        self.progress = progress or Progress(self.console, quiet=quiet, clock=clock)

    def mean_round_s(self) -> float | None:
        """A round's duration from the last (up to) 5 rounds, without round 1 (it also carries
        Ray's start-up); None before round 2 ended."""
        return sum(self.recent[1:]) / len(self.recent[1:]) if len(self.recent) > 1 else None

    def clients(self, server_round: int, done: int, sent: int) -> None:
        """While round ``server_round`` trains: ``done`` of the ``sent`` clients have replied
        (counted as the server pulls replies: :mod:`strategies.reply_progress`)."""
        self.progress.update(lambda: f"round {server_round}/{self.num_rounds}: {done}/{sent} clients done, "
                                     f"{self._elapsed_eta(server_round)}")

    def evaluating(self, server_round: int, setting: str, i: int, m: int) -> None:
        """While the server tests the model of ``server_round``: setting ``i`` of ``m`` started."""
        self.progress.update(lambda: f"round {server_round}/{self.num_rounds}: evaluating {setting} ({i}/{m} "
                                     f"settings), {self._elapsed_eta(server_round)}")

    def _elapsed_eta(self, server_round: int) -> str:
        elapsed = self.clock() - self.last
        mean = self.mean_round_s()
        if mean is None or server_round == 0:
            return seconds(elapsed)
        eta = mean * (self.num_rounds - server_round) + max(mean - elapsed, 0.0)
        return f"{seconds(elapsed)}, ETA {seconds(eta)}"

    def close(self) -> None:
        """End the progress display (e.g. when the run stops with an error)."""
        self.progress.close()

    def round_done(self, server_round: int, train_loss: float | None, failures: int,
                   accuracies: dict[str, float] | None, reasons: Sequence[str] = ()) -> None:
        """The round's progress line; with failures, the first of their ``reasons`` (e.g. a
        rejected reply's) and how many more."""
        self.progress.close()  # first: its last render still shows this round's time
        now = self.clock()
        took, self.last = now - self.last, now
        if self.quiet:
            return
        if server_round == 0:
            line = f"[bold]round 0/{self.num_rounds}[/] initial model"
        else:
            self.recent = (self.recent + [took])[-5:]
            mean = self.mean_round_s()
            if mean is not None:
                eta_text = f"{mean * (self.num_rounds - server_round):5.0f} s"
            else:  # round 1 alone would extrapolate the start-up
                eta_text = "    - s"
            line = f"[bold]round {server_round}/{self.num_rounds}[/] {took:5.1f} s  ETA {eta_text}"
            if train_loss is not None:
                line += f"  train loss {train_loss:.4f}"
            if failures:
                line += f"  [red]{failures} client failure(s)[/]"
                if reasons:
                    more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
                    line += f" [red]{escape(reasons[0][:120])}{more}[/]"
        if accuracies:
            line += "  " + " ".join(f"{k} {100 * v:.1f}" for k, v in accuracies.items())
        self.console.print(line, soft_wrap=True)

    def final_table(self, rounds: list[dict], settings: list[str], per_profile: dict, wall_time: float,
                    output_dir: str, protocol: dict | None = None, profile_bytes: dict | None = None,
                    schemes: dict[str, str] | None = None) -> None:
        """The test accuracy per evaluated round, a line per device profile (its accuracy at each
        of its settings; with ``profile_bytes`` its ``model_bytes`` there, with ``schemes`` the
        quantizer scheme of a profile that has its own), the protocol and the run's summary."""
        self.progress.close()
        table = Table(title="Test accuracy (%) of the global model per evaluation setting")
        table.add_column("round", justify="right")
        for s in settings:
            table.add_column(s, justify="right")
        table.add_column("uplink MB", justify="right")  # what the clients sent up to that round
        uplink = 0
        for r in rounds:
            uplink = r.get("train", {}).get("cumulative_uplink_bytes", uplink)
            if "eval" in r:
                table.add_row(str(r["round"]), *(f"{100 * r['eval'][s]['accuracy']:.2f}" for s in settings),
                              f"{uplink / 1e6:.3f}")
        self.console.print(table)
        for name, accs in per_profile.items():
            sizes = (profile_bytes or {}).get(name, {})
            scheme = f", {schemes[name]}" if schemes and schemes.get(name) else ""
            self.console.print(f"profile {name} (%{scheme}): " + "  ".join(
                f"{k} {100 * v:.2f}" + (f" ({sizes[k]:,} bytes)" if k in sizes else "") for k, v in accs.items()))
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
