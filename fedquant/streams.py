"""The named random streams of a run: every seeded draw uses ``np.random.default_rng([seed, STREAM, ...])``.

One enum instead of integer tags scattered over modules: two draws that shared a tag would be
silently correlated, and ``@unique`` makes a clash an import error. The values are part of the
results' identity (changing one changes every number drawn from it), so never renumber.
"""

from __future__ import annotations

import enum

import numpy as np


@enum.unique
class Stream(enum.IntEnum):
    HOLDOUT = 1  # server hold-out vs client data
    PARTITION = 2  # client partitions
    PROFILES = 3  # device profile of each client
    CLIENTS = 4  # clients sampled per round (and per retry)
    CLIENT_SEED = 5  # a client's local seed (batch order) per round
    ROUND_SETTING = 6  # per_round sampling: the setting a client trains at in a round
    STEP_SETTING = 7  # per_step and per_layer sampling: the client's draws before every step
    FAILURE = 8  # simulation-only fault injection: client raises
    NAN = 9  # simulation-only fault injection: client replies NaN
    VALIDATION = 10  # which server hold-out images are validation (the rest calibrate)
    CALIBRATION_DRAW = 11  # reevaluate: random calibration subsets (sensitivity to the draw)
    ATTACK = 12  # simulation-only fault injection: which sampled clients attack (faults.attack)
    MALFORMATION = 13  # faults.attack=malformed: how an attacker's reply breaks the protocol
    DP_NOISE = 14  # strategy.dp: the server's Gaussian noise (and adaptive clipping's noisy count)


def stream_rng(seed: int, stream: Stream, *keys: int) -> np.random.Generator:
    """The generator of ``stream`` for ``seed`` and further integer ``keys`` (round, client, ...)."""
    return np.random.default_rng([int(seed), int(stream), *map(int, keys)])
