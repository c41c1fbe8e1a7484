"""Local result files: results.json and metrics.csv, written atomically."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..files import write_text_atomic


def write_json(path: Path, obj: object) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


def metrics_rows(results: dict) -> list[dict]:
    """One row per evaluated round and setting: round, setting, accuracy, loss, train_loss, and
    the payload bytes the round's clients sent and were sent, and the uplink's total so far."""
    rows = []
    for r in results["rounds"]:
        train = r.get("train", {})
        train_loss = train.get("loss")
        sent = {k: train.get(k, "") for k in BYTES}
        for setting, m in r.get("eval", {}).items():
            rows.append({"round": r["round"], "setting": setting, "accuracy": m["accuracy"], "loss": m["loss"],
                         "train_loss": "" if train_loss is None else train_loss, **sent})
    return rows


BYTES = ("uplink_bytes", "downlink_bytes", "cumulative_uplink_bytes")
FIELDS = ["round", "setting", "accuracy", "loss", "train_loss", *BYTES]


def write_metrics_csv(path: Path, results: dict) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(metrics_rows(results))
    write_text_atomic(path, buf.getvalue())
