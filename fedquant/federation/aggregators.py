"""What the config checker and the server need to know about Flower's server strategies and its
differential-privacy wrappers, without importing Flower (``strategies/registry.py`` and
``strategies/privacy.py`` build them; their tests check these names against Flower's signatures).

Aggregation of the replies ``x_1..x_n`` (weights ``p_i``, the example counts):

- a weighted mean ``sum p_i x_i / sum p_i`` (:data:`MEAN_SERVERS`), which FedAvgM, FedAdam,
  FedYogi and FedAdagrad then turn into a server-optimizer step; only a weighted mean keeps
  HeteroFL's fill identity (``strategies/sub_models.py``: a sub-model reply's untouched entries are
  filled with their holders' mean, which a weighted mean leaves unchanged);
- per coordinate, order statistics (Yin et al. 2018): ``fedmedian`` the median,
  ``fedtrimmedavg`` the mean after cutting ``floor(beta n)`` values off each end;
- Krum / Multi-Krum (Blanchard et al. 2017): ``score(i) = sum of ||x_i - x_j||^2`` over the
  ``n - f - 2`` nearest ``x_j``; Krum takes the lowest-scored reply, Multi-Krum averages the ``m``
  lowest (``num_nodes_to_select``). The guarantee needs ``n > 2f + 2``, and ``m <= n - f``;
- Bulyan (El Mhamdi et al. 2018): Multi-Krum selects ``theta = n - 2f`` replies, then per
  coordinate the ``beta = theta - 2f`` values closest to their median are averaged; needs
  ``n >= 4f + 3`` (Flower skips the round's aggregation below that);
- q-FedAvg (Li et al. 2020): ``Delta_i = L (w - x_i)``, ``w - sum F_i^q Delta_i / sum h_i`` with
  ``F_i`` the client's train loss and ``L = 1 / client_learning_rate``.

Here ``f`` is ``num_malicious_nodes`` (Flower's default 0).
"""

from __future__ import annotations

from collections.abc import Mapping

MEAN_SERVERS = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
ROBUST_SERVERS = ("fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
SERVERS = (*MEAN_SERVERS, *ROBUST_SERVERS, "qfedavg")
KRUM_SERVERS = ("krum", "multikrum")

# strategy.dp -> the wrapper's options (Flower's constructor arguments less the strategy, the number
# of sampled clients, which the plan knows, and the privacy accountant, an object) and the required ones
DP_MODES = ("none", "server_fixed", "server_adaptive")
DP_OPTIONS: dict[str, tuple[str, ...]] = {
    "server_fixed": ("noise_multiplier", "clipping_norm"),
    "server_adaptive": ("noise_multiplier", "initial_clipping_norm", "target_clipped_quantile", "clip_norm_lr",
                        "clipped_count_stddev"),
}
DP_REQUIRED: dict[str, tuple[str, ...]] = {"server_fixed": ("noise_multiplier", "clipping_norm"),
                                           "server_adaptive": ("noise_multiplier",)}
DP_SERVERS = ("fedavg", "fedprox")  # the noise sigma C / m is calibrated to a plain mean of m clipped updates


def malicious(options: Mapping) -> int:
    """``f``: the number of malicious clients a Krum-type aggregator is told to tolerate."""
    return int(options.get("num_malicious_nodes", 0))


def min_replies(server: str, options: Mapping) -> int:
    """The fewest replies ``n`` the aggregator's rule is defined for (the module's bounds):
    ``2f + 3`` for Krum / Multi-Krum, ``4f + 3`` for Bulyan, 1 otherwise."""
    f = malicious(options)
    if server in KRUM_SERVERS:
        return 2 * f + 3
    if server == "bulyan":
        return 4 * f + 3
    return 1


def requirement(server: str) -> str:
    """The bound of :func:`min_replies`, as a formula for messages."""
    return {"krum": "n > 2f + 2", "multikrum": "n > 2f + 2", "bulyan": "n >= 4f + 3"}.get(server, "n >= 1")
