"""A sweep's runs: every job folder under the folders given, its results.json, and the method it
belongs to.

Jobs are grouped into methods by their experiment (the ``experiment=`` override) and their
config (results.json ``config``; the Hydra overrides for results without one), leaving out the
keys that differ per run or only say where and how a run ran (:data:`PER_RUN_KEYS`: seed,
``resume``/``resume_from``, output and W&B names, checkpointing, ...): a continued run is the same
method. A method's label (:func:`method_labels`) is its experiment's name, then the keys of the
overrides that not every method of that experiment shares, with this method's values (its own
override, else its config's value), then, where two labels would still be equal, the config keys
whose values differ between those methods: e.g. ``fmnist_fedavg client.lr_schedule=cosine`` and
``fmnist_fedavg client.lr_schedule=constant``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

Methods = dict[str, list[dict]]  # method label -> its runs' results.json

# keys (or sections, ending in "." or "/") that never define a method: per-run values, or where
# and how a run ran
PER_RUN_KEYS = ("seed", "resume", "resume_from", "quiet", "dataset.root", "hydra.", "hydra/",
                "checkpoint.", "simulation.", "logger.")
RUN_PATHS = ("init_from",)  # another run's folder, one per seed: only whether it is set counts
SET = "<a run>"  # the value shown for a key of RUN_PATHS that is set


class ReportError(ValueError):
    """Nothing to report from the folders given; ``str()`` is the one line shown to the user."""


@dataclass(frozen=True)
class Job:
    """One finished job: its experiment, the overrides that may define its method, its results."""

    experiment: str | None
    overrides: tuple[str, ...]
    results: dict


def per_run(key: str) -> bool:
    """Whether ``key`` (dotted, as in an override) differs per run or only says where it ran."""
    return any(key == k.rstrip("./") or (k[-1] in "./" and key.startswith(k))
               for k in PER_RUN_KEYS)


def _overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in yaml.safe_load(path.read_text()) or []] if path.is_file() else []


def _key(override: str) -> str:
    return override.split("=")[0].lstrip("~+")


def _experiment(overrides: list[str]) -> str | None:
    """The ``experiment=`` override's value (``+experiment=pays/cnn`` -> ``pays/cnn``)."""
    return next((o.split("=", 1)[1] for o in overrides if _key(o) == "experiment"), None)


def _method_overrides(overrides: list[str]) -> tuple[str, ...]:
    """The overrides that may define a method: not the experiment, per-run keys or run paths."""
    return tuple(o for o in overrides
                 if _key(o) != "experiment" and not per_run(_key(o)) and _key(o) not in RUN_PATHS)


def _value(value: object) -> str:
    """A config value as an override writes it: strings bare, the rest compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def flat_config(config: Mapping, prefix: str = "") -> dict[str, str]:
    """``{"client.lr": "0.02", ...}``: every leaf of ``config`` under its dotted key, as text."""
    out: dict[str, str] = {}
    for name, value in config.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            out |= flat_config(value, f"{key}.")
        else:
            out[key] = _value(value)
    return out


def method_config(results: dict) -> dict[str, str] | None:
    """The run's config as it defines its method (no per-run keys; a run path only as set or
    not; ``reevaluated`` for a re-evaluated run); None without a recorded config."""
    if "config" not in results:
        return None
    flat = {k: v for k, v in flat_config(results["config"]).items() if not per_run(k)}
    flat |= {k: SET for k in RUN_PATHS if flat.get(k, "null") != "null"}
    return flat | ({"reevaluated": "true"} if "reevaluated" in results else {})


def _identity(job: Job) -> tuple:
    config = method_config(job.results)
    what = tuple(sorted(config.items())) if config is not None else job.overrides
    return job.experiment, what


def _differing(configs: list[dict[str, str] | None]) -> list[str]:
    """Sorted keys whose values are not the same in every one of ``configs``."""
    known = [c for c in configs if c is not None]
    keys = sorted({k for c in known for k in c})
    return [k for k in keys if len({c.get(k) for c in known}) > 1]


def _shared_overrides(groups: list[list[Job]]) -> set[str]:
    """The overrides every run of every group has."""
    return set.intersection(*(set(j.overrides) for jobs in groups for j in jobs))


def _setting(jobs: list[Job], key: str) -> str | None:
    """``key=value`` for a group: the override every run of it has, else the recorded config's
    value (a group override ``strategy=...`` from ``strategy.name``); None if neither says."""
    given = [o for o in jobs[0].overrides if _key(o) == key]
    if given and all(given[0] in j.overrides for j in jobs):
        return given[0].lstrip("~+")
    config = method_config(jobs[0].results) or {}
    value = config.get(key, config.get(f"{key}.name"))
    return None if value is None else f"{key}={value}"


def _first_labels(groups: list[list[Job]]) -> list[list[str]]:
    """Per group: its experiment, then the keys of the overrides that not every group of that
    experiment has, each with this group's value."""
    out = []
    for jobs in groups:
        same = [g for g in groups if g[0].experiment == jobs[0].experiment]
        shared = _shared_overrides(same)
        keys = dict.fromkeys(_key(o) for g in same for j in g for o in j.overrides
                             if o not in shared)
        settings = [s for s in (_setting(jobs, k) for k in keys) if s is not None]
        out.append(([jobs[0].experiment] if jobs[0].experiment else []) + settings)
    return out


def method_labels(groups: list[list[Job]]) -> list[str]:
    """One short, distinct label per group of jobs (see the module docstring); a label that
    would be empty is the strategy's name."""
    parts = _first_labels(groups)
    configs = [method_config(jobs[0].results) for jobs in groups]
    first = [" ".join(p) for p in parts]
    for label in dict.fromkeys(first):
        clash = [i for i, f in enumerate(first) if f == label]
        if len(clash) > 1:
            keys = _differing([configs[i] for i in clash])
            for i in clash:
                parts[i] += [f"{k}={configs[i][k]}" for k in keys if configs[i] and k in configs[i]]
    return _distinct([" ".join(p) or _strategy(groups[i][0].results) for i, p in enumerate(parts)])


def _strategy(results: dict) -> str:
    return ((results.get("config") or {}).get("strategy") or {}).get("name", "run")


def _distinct(labels: list[str]) -> list[str]:
    """``labels`` with a repeated one numbered (``label (2)``): only groups that neither their
    overrides nor a recorded config tell apart."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def _job_order(d: Path) -> tuple[float, str]:
    return (int(d.name) if d.name.isdigit() else float("inf"), str(d))


def _job_dirs(roots: list[Path]) -> list[Path]:
    """Every job folder under ``roots`` (with a .hydra folder or a results.json), in job order."""
    found = {p.parent.parent for root in roots for p in root.rglob(".hydra/overrides.yaml")}
    found |= {p.parent for root in roots for p in root.rglob("results.json")}
    return sorted(found, key=_job_order)


def _job(job_dir: Path) -> Job:
    overrides = _overrides(job_dir)
    results = json.loads((job_dir / "results.json").read_text())
    return Job(_experiment(overrides), _method_overrides(overrides), results)


def collect(roots: list[Path]) -> tuple[Methods, list[Path]]:
    """Final results under the sweep (or job) folders ``roots``, grouped by method label
    (:func:`method_labels`), methods in the order of their first job; and the job folders that
    have no results.json."""
    groups: dict[tuple, list[Job]] = {}
    missing = []
    for d in _job_dirs(roots):
        if not (d / "results.json").is_file():
            missing.append(d)
            continue
        job = _job(d)
        groups.setdefault(_identity(job), []).append(job)
    labels = method_labels(list(groups.values()))
    methods = {label: [j.results for j in jobs]
               for label, jobs in zip(labels, groups.values(), strict=True)}
    return methods, missing
