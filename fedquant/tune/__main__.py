"""``python -m fedquant.tune [options] -- [overrides]``: an Optuna study over fedquant runs.

Exit codes: 0 with a best trial, 1 when no trial completed, 2 for a bad option, space, override
or storage (one line), 130 when interrupted (the study is kept: the same command continues it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DESCRIPTION = """\
Tune fedquant's keys with Optuna (TPE sampler, median pruner). Each trial is one run,
`python -m fedquant <overrides> <point> quiet=true hydra.run.dir=<root>/trial_<n>`, in its own
process (a crashed run fails that trial, not the study). The objective, maximized, is the run's
final VALIDATION accuracy at --metric (results.json final_validation): the test set is never
chosen on. The study lives in --storage; running the same command again continues it.

Search space (--param, repeatable; default client.lr=log:0.005:0.3):
  KEY=log:A:B       a float in [A, B] on a log scale, e.g. client.lr=log:0.005:0.3
  KEY=A:B           a float in [A, B], e.g. client.momentum=0.5:0.95
  KEY=int:A:B       an integer in [A, B], e.g. client.local_epochs=int:1:5
  KEY=choice:X,Y,Z  one of the values, e.g. strategy.sampling=choice:per_step,per_round"""

EPILOG = """\
Examples:
  python -m fedquant.tune                                     # client.lr for W4A4 on digits
  python -m fedquant.tune --trials 20 -- +experiment=fmnist_qafedavg num_rounds=20
  python -m fedquant.tune --param client.lr=log:0.01:0.2 --param client.local_epochs=int:1:3 \\
      --storage sqlite:///tune.db --study-name lr_epochs -- num_rounds=10
Pruning follows the validation accuracy of every evaluated round, read from the run's
checkpoints (checkpoint.every, default 1); eval.every sets how often there is one."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fedquant.tune", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                   help="Hydra overrides every trial runs with (after --), as for python -m fedquant")
    p.add_argument("--metric", default="w4a4", help="the setting whose final validation accuracy is maximized "
                                                    "(default: w4a4)")
    p.add_argument("--trials", type=int, default=12, help="trials in the study in all, counting those of earlier "
                                                          "invocations (complete, pruned or failed; default: 12)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=SPEC", help="a searched key (see above)")
    p.add_argument("--storage", help="an Optuna RDB URL (default: sqlite:///<root>/study.db)")
    p.add_argument("--study-name", help="the study in the storage (default: tune_<metric>)")
    p.add_argument("--root", type=Path, help="folder of the trials' runs and logs (default: outputs/tune/<study name>)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (plus the trials already in the study)")
    p.add_argument("--prune", action=argparse.BooleanOptionalAction, default=True,
                   help="stop trials whose validation accuracy falls below the median of earlier trials at the same "
                        "round (MedianPruner; default: --prune)")
    p.add_argument("--startup-trials", type=int, default=5, help="trials never pruned before pruning starts "
                                                                 "(n_startup_trials; default: 5)")
    p.add_argument("--warmup-rounds", type=int, default=2, help="no trial is pruned before this round "
                                                                "(n_warmup_steps; default: 2)")
    return p


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.trials < 1 or args.startup_trials < 0 or args.warmup_rounds < 0:
        fail("--trials must be at least 1, --startup-trials and --warmup-rounds at least 0")
    try:
        import optuna
    except ImportError:
        fail('python -m fedquant.tune needs Optuna: pip install -e ".[tune]"')
    from .checks import SetupError, check_setup, metric_name
    from .space import SpaceError, parse_space
    from .study import Search, open_study, optimize, summary

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is ours
    try:
        space = parse_space(args.param or ["client.lr=log:0.005:0.3"])
        metric = metric_name(args.metric)
        cfg = check_setup(args.overrides, space, metric)
        name = args.study_name or f"tune_{metric}"
        root = (args.root or Path("outputs") / "tune" / name).resolve()
        root.mkdir(parents=True, exist_ok=True)
        storage = args.storage or f"sqlite:///{root / 'study.db'}"
        search = Search(tuple(args.overrides), space, metric, root)
        study = open_study(name, storage, search, args.seed, args.prune, args.startup_trials, args.warmup_rounds)
    except (SpaceError, SetupError) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail(str(err))
    print(f"study {name} in {storage}: {len(study.trials)} trial{'' if len(study.trials) == 1 else 's'} so far, up to {args.trials}; runs in {root}")
    if args.prune and not cfg["checkpoint"]["every"]:
        print("note: checkpoint.every=0: a trial's rounds are seen only when it ends, so none is pruned")
    try:
        optimize(study, search, args.trials)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the study is kept in {storage}; the same command continues it", file=sys.stderr)
        sys.exit(130)
    lines = summary(study, search)
    print("\n".join(lines))
    if lines[-1].startswith("no trial completed"):
        sys.exit(1)


if __name__ == "__main__":
    main()
