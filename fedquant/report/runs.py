"""A sweep's runs: every job folder under the folders given, its results.json, and the method it
belongs to.

Jobs are grouped into methods by their Hydra overrides (those that differ between jobs; seed,
and ``resume``/``resume_from`` excluded: a continued run is the same method).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

Methods = dict[str, list[dict]]  # method label -> its runs' results.json


class ReportError(ValueError):
    """Nothing to report from the folders given; ``str()`` is the one line shown to the user."""


def _overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in yaml.safe_load(path.read_text()) or []] if path.is_file() else []


def _method_overrides(job_dir: Path) -> list[str]:
    """The job's overrides that define its method (not seed, hydra.*, resume*)."""
    excluded = ("seed", "hydra.", "resume")
    return [o for o in _overrides(job_dir) if not o.split("=")[0].lstrip("+").startswith(excluded)]


def _job_order(d: Path) -> tuple[float, str]:
    return (int(d.name) if d.name.isdigit() else float("inf"), str(d))


def _job_dirs(roots: list[Path]) -> list[Path]:
    """Every job folder under ``roots`` (with a .hydra folder or a results.json), in job order."""
    found = {p.parent.parent for root in roots for p in root.rglob(".hydra/overrides.yaml")}
    found |= {p.parent for root in roots for p in root.rglob("results.json")}
    return sorted(found, key=_job_order)


def collect(roots: list[Path]) -> tuple[Methods, list[Path]]:
    """Final results under the sweep (or job) folders ``roots``, grouped by method label; and the
    job folders that have no results.json."""
    job_dirs = _job_dirs(roots)
    overrides = {d: _method_overrides(d) for d in job_dirs}
    shared = set.intersection(*(set(o) for o in overrides.values())) if overrides else set()
    methods: Methods = {}
    missing = []
    for d in job_dirs:
        path = d / "results.json"
        if not path.is_file():
            missing.append(d)
            continue
        results = json.loads(path.read_text())
        label = ", ".join(o for o in overrides[d] if o not in shared)
        methods.setdefault(label or results["config"]["strategy"]["name"], []).append(results)
    return methods, missing
