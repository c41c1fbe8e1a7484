import numpy as np
import pytest

from fedquant.data import label_histogram, mean_label_entropy, partition_indices, split_holdout

rng = np.random.default_rng(0)
LABELS = rng.integers(0, 10, 5000)


@pytest.mark.parametrize("scheme, params", [("iid", {}), ("dirichlet", {"alpha": 0.5}), ("shards", {"k": 2})])
def test_every_sample_exactly_once_and_deterministic(scheme, params):
    holdout, rest = split_holdout(len(LABELS), 1024, seed=3)
    parts = partition_indices(LABELS[rest], 20, scheme, seed=3, **params)
    assigned = np.concatenate([rest[p] for p in parts] + [holdout])
    assert len(assigned) == len(LABELS) and len(np.unique(assigned)) == len(LABELS)
    again = partition_indices(LABELS[rest], 20, scheme, seed=3, **params)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(LABELS[rest], 20, scheme, seed=4, **params)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_dirichlet_lower_alpha_means_more_label_skew():
    entropy = {a: mean_label_entropy(label_histogram(LABELS, partition_indices(LABELS, 20, "dirichlet", 0, alpha=a), 10))
               for a in (0.1, 1.0, 10.0)}
    assert entropy[0.1] < entropy[1.0] < entropy[10.0]
    assert entropy[10.0] > 0.9 * np.log(10)  # nearly uniform labels per client


def test_dirichlet_min_size_respected():
    parts = partition_indices(LABELS, 50, "dirichlet", 0, alpha=0.5, min_size=30)
    assert min(len(p) for p in parts) >= 30
    with pytest.raises(ValueError, match="no Dirichlet partition with every client holding >= 90"):
        partition_indices(LABELS, 50, "dirichlet", 0, alpha=0.1, min_size=90, max_tries=5)


def test_shards_give_exactly_k_classes():
    hist = label_histogram(LABELS, partition_indices(LABELS, 15, "shards", 0, k=3), 10)
    assert ((hist > 0).sum(1) == 3).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"scheme": "dirichlet", "alpha": 0.0}, r"partition.alpha=0.0 is not valid: allowed is a number > 0"),
    ({"scheme": "dirichlet", "alpha": -1}, r"partition.alpha=-1 is not valid"),
    ({"scheme": "shards", "k": 11}, r"partition.k=11 is not valid: allowed is an integer in 1..10"),
    ({"scheme": "iid", "num_clients": 5001}, r"num_clients=5001 is not valid: allowed is 1..5000"),
    ({"scheme": "pathological"}, r"partition.name='pathological' is not valid: allowed are iid, dirichlet, shards"),
])
def test_bad_input(kwargs, match):
    kwargs = {"num_clients": 10, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        partition_indices(LABELS, **kwargs)
