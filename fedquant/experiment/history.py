"""A run's history: evaluations, client reports and timings by round; what results.json and the
checkpoints are made of."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..federation.profiles import Profile, per_profile
from ..federation.reports import RoundReport


@dataclass
class RunHistory:
    """Everything a run has measured, by round. Restored from a checkpoint on resume, so the
    results of a continued run hold every round since round 0."""

    evals: dict[int, dict] = field(default_factory=dict)  # round -> setting -> {accuracy, loss} (test)
    validation: dict[int, dict] = field(default_factory=dict)  # round -> setting -> {accuracy, loss}
    mixed: dict[int, dict] = field(default_factory=dict)  # round -> budget name -> the assignment tested
    reports: dict[int, RoundReport] = field(default_factory=dict)  # round -> training replies
    round_s: dict[int, float] = field(default_factory=dict)  # round -> training wall time (this process)
    eval_s: dict[int, float] = field(default_factory=dict)  # round -> evaluation wall time
    to_round1_end_s: float | None = None  # from the start of the run to the end of round 1

    def record_train(self, server_round: int, report: RoundReport) -> None:
        self.reports[server_round] = report

    def record_eval(self, server_round: int, evaluation: dict, seconds: float) -> None:
        """``evaluation`` as the Evaluator returns it: ``{"test": ..., "validation": ...,
        "mixed_precision": ...}``."""
        self.evals[server_round] = evaluation["test"]
        if evaluation["validation"]:
            self.validation[server_round] = evaluation["validation"]
        if evaluation.get("mixed_precision"):
            self.mixed[server_round] = evaluation["mixed_precision"]
        self.eval_s[server_round] = seconds

    def checkpoint_payload(self) -> dict:
        """Reports and evaluations as plain data (what a weights-only checkpoint can hold)."""
        return {"reports": {str(r): rep.to_dict() for r, rep in self.reports.items()},
                "evals": {str(r): e for r, e in self.evals.items()},
                "validation": {str(r): e for r, e in self.validation.items()},
                "mixed_precision": {str(r): e for r, e in self.mixed.items()}}

    @classmethod
    def from_checkpoint(cls, payload: Mapping) -> RunHistory:
        """Inverse of :meth:`checkpoint_payload` (timings start afresh)."""
        return cls(evals={int(r): e for r, e in payload["evals"].items()},
                   validation={int(r): e for r, e in payload.get("validation", {}).items()},
                   mixed={int(r): e for r, e in payload.get("mixed_precision", {}).items()},
                   reports={int(r): RoundReport.from_dict(d) for r, d in payload["reports"].items()})

    def final_assignments(self) -> dict[str, dict]:
        """The mixed-precision assignments tested at the last evaluation (empty without budgets)."""
        return self.mixed.get(max(self.evals), {}) if self.evals else {}

    def final(self, split: str = "test") -> dict[str, float]:
        """Accuracy per setting at the last evaluated round, on the test or validation split."""
        evals = self.evals if split == "test" else self.validation
        return {k: v["accuracy"] for k, v in evals[max(evals)].items()} if evals else {}

    def results(self, cfg: Mapping, profiles: list[Profile], model_bytes: dict[str, int], wall_time: float,
                protocol: dict) -> dict:
        """The content of results.json (without the partition sizes and resume note the app adds).
        ``final`` is the test accuracy at the last evaluation, ``final_validation`` the validation
        accuracy there, ``per_profile`` / ``per_profile_model_bytes`` each profile's accuracy and
        deployed size at its settings, on its level (width, scheme); ``protocol`` says how the
        server evaluated."""
        rounds = []
        uplink = downlink = 0
        for r in range(cfg["num_rounds"] + 1):
            entry: dict = {"round": r}
            if r in self.evals:
                entry["eval"] = self.evals[r]
            if r in self.validation:
                entry["validation"] = self.validation[r]
            if r in self.mixed:
                entry["mixed_precision"] = self.mixed[r]
            if r in self.reports:
                entry["train"] = self.reports[r].summary()
                uplink += entry["train"]["uplink_bytes"]
                downlink += entry["train"]["downlink_bytes"]
                entry["train"] |= {"cumulative_uplink_bytes": uplink, "cumulative_downlink_bytes": downlink}
            rounds.append(entry)
        final = self.final()
        return {"config": cfg, "protocol": protocol, "rounds": rounds, "final": final,
                "final_validation": self.final("validation"), "per_profile": per_profile(profiles, final),
                "model_bytes": model_bytes, "per_profile_model_bytes": per_profile(profiles, model_bytes), "communication": {"uplink_bytes": uplink, "downlink_bytes": downlink},
                "wall_time_s": wall_time}

    def timing(self) -> dict:
        return {"to_round1_end_s": self.to_round1_end_s, "round_s": list(self.round_s.values()),
                "eval_s": {str(r): t for r, t in self.eval_s.items()}}
