"""``python -m fedquant.export <run dir or checkpoint> [--settings ...] [--out DIR]``: the command
line of :func:`fedquant.export.run.export_run` (what is exported, and how it is checked: the
docstring of :mod:`fedquant.export.run`).

Errors (missing extra, no checkpoint, bad setting, a run without calibration images, an
unwritable folder) are one ``error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .run import EXTRA, ExportError, export_run, missing_extra


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fedquant.export",
        description="Export a run's global model, calibrated exactly as the server evaluates it, as ONNX "
                    "(QuantizeLinear/DequantizeLinear) files with AIMET-style encodings, one per setting.")
    parser.add_argument("run", type=Path, help="a run directory (its newest checkpoint) or a checkpoint file")
    parser.add_argument("--settings", nargs="+", default=None,
                        help="settings to export, e.g. fp w8a8 w4a4 (default: the run's eval.settings plus fp, "
                             "and every device profile's settings in a subfolder)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <run dir>/export)")
    parser.add_argument("--no-fold-bn", action="store_true",
                        help="keep BatchNorm as a float op after its conv instead of folding it into the "
                             "weights' dequantization scale and the bias")
    parser.add_argument("--no-int4", action="store_true", help="store 2..4-bit weights as INT8, not INT4")
    parser.add_argument("--check", action="store_true",
                        help="also compare the test accuracy of every file with the simulated model's")
    args = parser.parse_args(argv)
    missing = missing_extra()
    if missing:
        print(f"error: {missing} is not installed (the export needs onnx and onnxruntime): {EXTRA}", file=sys.stderr)
        sys.exit(2)
    try:
        export_run(args.run, args.out, args.settings, not args.no_fold_bn, not args.no_int4, args.check)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
