"""A run's global model, calibrated exactly as the server evaluates it, as ONNX QDQ files with
encodings (:func:`export_run`; its command line is ``python -m fedquant.export <run dir or
checkpoint> [--settings ...] [--out DIR]``, :mod:`fedquant.export.__main__`).

For each setting the run's evaluator is rebuilt from the checkpoint's config (same hold-out,
weight and activation ranges, BatchNorm rule, PTQ method) and ``Evaluator.deploy`` produces the
model the server tests; it is written as ``<setting>.onnx`` and ``<setting>.encodings.json``
(:mod:`fedquant.export.onnx_export`, :mod:`fedquant.export.encodings`). Default settings: the
run's ``eval.settings`` plus ``fp``, in ``--out`` (default ``<run dir>/export``), and for every
device profile of the run (``strategy.profiles``) a subfolder ``<profile name>/`` with that
profile's settings, on the profile's own sub-model when it has a ``width`` below 1 (HeteroFL:
the first ``ceil(width * C)`` channels of every hidden layer, cut from the global model and
calibrated like the server's per-width evaluation) and under the profile's quantizer scheme
(weight granularity, float or power-of-two scales; a power-of-two scale is written exactly,
``2^k`` in the float32 initializer, and a BatchNorm after such a conv stays a float node); a
profile with a mixed-precision ``budget`` also gets ``mixed.onnx``, the assignment the server
chooses for this checkpoint (:meth:`fedquant.learning.evaluation.Evaluator.assign`, each layer at
its own bits; the bits per layer are printed and stored in its encodings). ``--settings`` exports exactly the settings given (no profile folders); a
setting the run never evaluated is allowed (it is calibrated the same way; there is just no
reported accuracy to compare with), a malformed one is an error. Every file is checked with
onnxruntime on 256 test images against the simulated model (the largest logit difference is
printed, with the activation codes behind it: :func:`fedquant.export.check.compare`);
``--check`` also compares the test accuracy.

Errors (missing extra, no checkpoint, bad setting, a run without calibration images, an
unwritable folder) are one ``error: ...`` line and exit status 2. Every model is built and
checked before the first file is written, and each file is written atomically (temporary file,
then rename), so a failure leaves no partial file.
"""

from __future__ import annotations

import importlib
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..data import DatasetError
from ..experiment.config import complete
from ..experiment.specs import experiment_specs, run_profiles, server_evaluator
from ..experiment.workspace import federated_data
from ..federation.bitwidths import FLOAT, Setting, parse_settings, setting_name
from ..federation.profiles import Level
from ..files import atomic_write
from ..learning.evaluation import Evaluator, accuracy, model_bytes
from ..models.state import float_state
from ..models.width import extract
from ..quant.scheme import get_scheme
from ..runtime.checkpoint import CheckpointError, evaluated_state, list_checkpoints, load_checkpoint
from ..tracking.progress import Progress, seconds
from ..tracking.results import write_json

EXTRA = 'pip install -e ".[export]"'
CHECK_IMAGES = 256


class ExportError(RuntimeError):
    """A problem the user can fix; ``str()`` is the one line shown."""


@dataclass
class Artifact:
    """One exported setting, in memory until every setting has been built."""

    setting: Setting
    onnx: bytes
    encodings: dict
    model_bytes: int
    logit_diff: float
    accuracy: dict[str, float]  # with --check: simulated, onnxruntime exact and default
    explanation: str = ""  # the activation codes behind a quantized logit difference (check.Agreement)


def missing_extra() -> str | None:
    """The first of onnx/onnxruntime that cannot be imported, else None."""
    for module in ("onnx", "onnxruntime"):
        try:
            importlib.import_module(module)
        except ImportError:
            return module
    return None


def find_checkpoint(target: Path) -> Path:
    """``target`` itself (a checkpoint file) or the newest checkpoint of a run directory."""
    if target.is_file():
        return target
    if not target.is_dir():
        raise ExportError(f"{target}: no such run directory or checkpoint file")
    found = list_checkpoints(target)
    if not found:
        raise ExportError(f"{target}: no checkpoint_r*.pt in this run directory (was checkpoint.every=0?); "
                          "pass a run directory with a checkpoint or a checkpoint file")
    return found[-1]


Job = Setting | str  # a setting, or a profile's mixed-precision budget (its name, mp_<profile>)


def job_name(job: Job) -> str:
    return job if isinstance(job, str) else setting_name(job)


def file_stem(job: Job) -> str:
    return "mixed" if isinstance(job, str) else setting_name(job)


def plan_settings(cfg: dict, names: list[str] | None) -> dict[str, tuple[Level, list[Job]]]:
    """Folder (``""`` = the output folder, else a profile's name) -> (the level: model width and
    scheme, settings to export there, and its mixed-precision budget's name where it has one)."""
    if names is not None:
        return {"": (Level(), parse_settings(names, "--settings"))}
    evaluated = parse_settings(cfg["eval"]["settings"], "eval.settings")
    plan = {"": (Level(), ([] if FLOAT in evaluated else [FLOAT]) + evaluated)}
    for profile in run_profiles(cfg):
        folder = re.sub(r"[^A-Za-z0-9_.-]", "_", profile.name)
        if folder in ("", ".", ".."):
            raise ExportError(f"profile name {profile.name!r} cannot be a folder name")
        plan[folder] = (profile.level, profile.settings + ([profile.mixed] if profile.mixed else []))
    return plan


def check_calibration(cfg: dict, settings: list[Setting]) -> None:
    """A quantized setting needs calibration images: the hold-out minus the validation split."""
    images = int(cfg["dataset"]["holdout"]) - int(cfg["dataset"]["validation"])
    quantized = [job_name(s) for s in settings if s != FLOAT]
    if quantized and images <= 0:
        raise ExportError(f"cannot calibrate {', '.join(quantized)}: the run has no calibration images "
                          f"(dataset.holdout={cfg['dataset']['holdout']}, dataset.validation="
                          f"{cfg['dataset']['validation']}); only fp can be exported")


def check_writable(out: Path) -> None:
    """Create ``out`` and prove a file can be written there (then removed)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe-"):
            pass
    except OSError as err:
        raise ExportError(f"--out {out}: cannot write there ({err.strerror or err})") from None


def build_artifact(evaluator: Evaluator, state: dict, job: Job, fold_batchnorm: bool, int4: bool,
                   full_check: bool) -> Artifact:
    """Deploy ``job`` as the server does (a budget: at the assignment it chooses for ``state``),
    export it and check it with onnxruntime."""
    from .check import compare, non_pow2_scales, onnx_accuracy, session
    from .onnx_export import export_model

    name = job_name(job)
    try:
        setting = evaluator.assign(state, job) if isinstance(job, str) else job
        model = evaluator.deploy(state, setting)
    except ValueError as err:
        raise ExportError(f"cannot calibrate {name}: {err}") from None
    data = evaluator.data
    exported = export_model(model, data.image_shape, name, fold_batchnorm=fold_batchnorm, int4=int4,
                            integer_bias=evaluator.protocol.integer_bias)
    if get_scheme(model).pow2 and (bad := non_pow2_scales(exported.model)):
        raise ExportError(f"{name}: the scales {', '.join(bad)} are not powers of two, as the scheme requires")
    blob = exported.to_bytes()
    exact = session(blob, exact=True)
    agreement = compare(model, exported, data.normalize(data.test_x[:CHECK_IMAGES]))
    scores = {}
    if full_check:
        scores["simulated"] = accuracy(model, data, data.test_x, data.test_y, evaluator.batch_size)[0]
        scores["onnxruntime"] = onnx_accuracy(exact, data, data.test_x, data.test_y)[0]
        scores["onnxruntime_default"] = onnx_accuracy(session(blob, exact=False), data, data.test_x, data.test_y)[0]
    encodings = exported.encodings | ({"mixed_precision": evaluator.assignments[job]} if isinstance(job, str) else {})
    return Artifact(setting, blob, encodings, model_bytes(model, setting), agreement.logit_diff, scores,
                    agreement.describe())


def export_run(target: Path, out: Path | None = None, names: list[str] | None = None, fold_batchnorm: bool = True,
               int4: bool = True, full_check: bool = False, log=print) -> list[Path]:
    """Export a run's global model (module docstring); returns the files written."""
    checkpoint = find_checkpoint(target)
    try:
        payload = load_checkpoint(checkpoint)
    except CheckpointError as err:
        raise ExportError(str(err)) from None
    cfg = payload.get("config")
    if not isinstance(cfg, dict):
        raise ExportError(f"{checkpoint}: the checkpoint holds no run config; export needs one written by fedquant")
    cfg = complete(cfg)  # keys an older run lacks take the schema's defaults (e.g. eval.integer_bias)
    try:
        plan = plan_settings(cfg, names)
    except ValueError as err:
        raise ExportError(str(err)) from None
    jobs = list(dict.fromkeys((level, s) for level, folder in plan.values() for s in folder))  # (level, setting)
    settings = list(dict.fromkeys(s for _, s in jobs))
    check_calibration(cfg, settings)
    out = out if out is not None else checkpoint.parent / "export"
    check_writable(out)
    evaluated = parse_settings(cfg["eval"]["settings"], "eval.settings")
    try:
        fed = federated_data(experiment_specs(cfg)[0])
    except DatasetError as err:
        raise ExportError(str(err)) from None
    evaluator = server_evaluator(cfg, fed, [s for level, s in jobs if level == Level() and not isinstance(s, str)] or [FLOAT])
    labels = [level.name(job_name(s)) for level, s in jobs]
    log(f"{checkpoint} (round {payload.get('round')}): {cfg['model']['name']} on {cfg['dataset']['name']}, "
        f"{len(fed.calibration)} calibration images; exporting {', '.join(labels)}")
    artifacts = {}
    state = evaluated_state(payload)
    progress = Progress()  # the setting being built: live on a terminal; in logs a line after 15 s without one
    try:
        for i, ((level, setting), name) in enumerate(zip(jobs, labels, strict=True), 1):
            begun = time.monotonic()
            progress.update(lambda name=name, i=i, begun=begun: f"exporting {name} ({i}/{len(jobs)} settings): "
                            f"calibrating, tracing, checking, {seconds(time.monotonic() - begun)}")
            deployer = evaluator if level == Level() else evaluator.levels[level]
            level_state = state if level.width == 1 else extract(state, float_state(deployer.model))
            try:
                artifacts[level, setting] = build_artifact(deployer, level_state, setting, fold_batchnorm, int4,
                                                           full_check)
            except ValueError as err:  # an unsupported op or a state that does not match the model
                raise ExportError(f"{name}: {err}") from None
            a = artifacts[level, setting]
            note = "" if setting in evaluated or setting == FLOAT or level != Level() else " (not in the run's eval.settings)"
            if isinstance(setting, str):
                note = f"  bits per layer {' '.join(a.encodings['mixed_precision']['bits'])}"
            scores = " ".join(f"{k} {100 * v:.2f}" for k, v in a.accuracy.items())
            log(f"  {name:>8}  {len(a.onnx):>10,} bytes on disk  model_bytes {a.model_bytes:>10,}  "
                f"max |logit diff| {a.logit_diff:.2e}{a.explanation}{'  test accuracy: ' + scores if scores else ''}{note}  "
                f"[{i}/{len(jobs)}, {seconds(time.monotonic() - begun)}]")
    finally:
        progress.close()
    written = []
    try:
        for folder, (level, folder_settings) in plan.items():
            target_dir = out / folder
            target_dir.mkdir(parents=True, exist_ok=True)
            for setting in folder_settings:
                a, stem = artifacts[level, setting], file_stem(setting)
                written.append(atomic_write(target_dir / f"{stem}.onnx", lambda tmp, blob=a.onnx: tmp.write_bytes(blob)))
                write_json(target_dir / f"{stem}.encodings.json", a.encodings)
                written.append(target_dir / f"{stem}.encodings.json")
    except OSError as err:
        raise ExportError(f"--out {out}: writing failed ({err.strerror or err}); {len(written)} complete files "
                          "were written before") from None
    log(f"wrote {len(written)} files to {out}")
    return written
