"""Learning loss, EOAL and MQNet: their losses, scores and selection on hand-made inputs, the reference
code's known failures, and a two-round run of each through Ray on digits."""

from __future__ import annotations

import math
import threading

import numpy as np
import pandas as pd
import pytest
import torch

from osal_ray.strategies import LabeledScores, PoolScores, QueryContext, get_strategy, query
from osal_ray.strategies.eoal import distance_entropy, round_robin
from osal_ray.strategies.mqnet import MetaNetwork, max_similarity, standardize
from osal_ray.training.checkpoints import NetworkSpec
from osal_ray.training.losses import ranking_loss
from osal_ray.training.objectives import OBJECTIVES, cluster_loss, nt_xent


# ----------------------------------------------------------------------------- learning loss
def test_ranking_loss_worked_example():
    # Pairs (0, 3) and (1, 2). True losses 3 > 0 and 1 < 2: signs +1, -1.
    predicted = torch.tensor([0.5, 0.0, 1.0, 0.0])
    target = torch.tensor([3.0, 1.0, 2.0, 0.0])
    # pair (0,3): max(0, 1 - (+1)(0.5 - 0.0)) = 0.5; pair (1,2): max(0, 1 - (-1)(0.0 - 1.0)) = 0.0
    assert float(ranking_loss(predicted, target, margin=1.0)) == pytest.approx(0.25)
    assert float(ranking_loss(torch.tensor([1.0]), torch.tensor([1.0]))) == 0.0  # a batch of one has no pair


def test_ll_queries_the_highest_predicted_loss():
    pool = PoolScores(np.arange(5), {"predicted_loss": np.array([0.1, 2.0, 0.5, 3.0, 1.0])})
    assert query("ll", pool, 2, num_known=2).indices.tolist() == [3, 1]


def test_learning_loss_objective_trains_the_module_and_detaches_late():
    torch.manual_seed(0)
    spec = NetworkSpec("mlp", 3, 1, 8, {"hidden": 16}, head="loss_prediction")
    model = spec.build()
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    objective = OBJECTIVES.get("learning_loss")({"weight": 1.0, "margin": 1.0, "detach_fraction": 0.5}, 3, y.numpy(), torch.device("cpu"), torch.Generator())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    first = None
    for epoch in range(30):
        objective.start_epoch(model, x, y, epoch, 30)
        loss = objective.loss(model, x, y, torch.arange(64))
        first = first if first is not None else float(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss) < first
    assert model.detach_features  # past half of the epochs


# ----------------------------------------------------------------------------- EOAL
def test_distance_entropy_worked_example():
    centres = np.array([[0.0, 0.0], [2.0, 0.0]])
    # Equidistant point: uniform softmax, normalised entropy 1. At a centre: distances 0 and 2.
    values = distance_entropy(np.array([[1.0, 0.0], [0.0, 0.0]]), centres)
    p = np.exp([0.0, -2.0]) / np.exp([0.0, -2.0]).sum()
    assert values[0] == pytest.approx(1.0)
    assert values[1] == pytest.approx(-(p * np.log(p)).sum() / math.log(2))
    assert (distance_entropy(np.ones((3, 2)), centres[:1]) == 0).all()  # one centre: no distance entropy


def test_round_robin_ends_when_the_budget_is_below_the_number_of_clusters():
    # The reference loops forever here: 5 clusters, 3 to pick, per-cluster quota int(3/5) = 0.
    scores = np.arange(10, dtype=float)
    clusters = np.repeat(np.arange(5), 2)
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("picked", round_robin(scores, clusters, 3)))
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "round_robin did not terminate"
    assert result["picked"].tolist() == [0, 2, 4]  # the best of the first three clusters


def test_round_robin_spreads_and_stops_when_clusters_run_dry():
    scores = np.array([5.0, 1.0, 3.0, 0.5, 9.0, 2.0])
    clusters = np.array([0, 0, 0, 1, 1, 2])
    assert round_robin(scores, clusters, 4).tolist() == [1, 3, 5, 2]  # one each (quota 1), then cluster 0's next
    assert sorted(round_robin(scores, clusters, 50).tolist()) == list(range(6))  # everything, then stop


def _eoal_pool(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    pred = np.concatenate([np.zeros(n // 2, int), np.ones(n // 2 - 5, int), np.full(5, 2)])
    embedding = rng.normal(size=(n, 4)).astype(np.float32)
    closed = rng.uniform(0, 1, n).astype(np.float32)
    return PoolScores(np.arange(n), {"det_pred": pred, "ova_closed_entropy": closed, "det_embedding": embedding})


def test_eoal_without_unknowns_ranks_by_closed_set_entropy_among_predicted_known():
    pool = _eoal_pool()
    labeled = LabeledScores(PoolScores(np.array([900]), {k: v[:1] for k, v in pool.columns.items()}), np.array([0]))
    selection = query("eoal", pool, 5, num_known=2, labeled=labeled, params={"diversity": False})
    known = np.flatnonzero(pool["det_pred"] < 2)
    expected = known[np.argsort(pool["ova_closed_entropy"][known])[:5]]
    assert selection.indices.tolist() == expected.tolist()
    assert selection.values["n_unknown_centres"] == 0


def test_eoal_subtracts_distance_entropy_to_unknown_centres():
    pool = _eoal_pool()
    rng = np.random.default_rng(3)
    unknown = rng.normal(size=(6, 4)).astype(np.float32) + np.array([3, 0, 0, 0], dtype=np.float32)
    labeled = LabeledScores(
        PoolScores(np.arange(900, 906), {"det_pred": np.full(6, 2), "ova_closed_entropy": np.zeros(6, np.float32), "det_embedding": unknown}),
        np.full(6, -1),
    )
    selection = query("eoal", pool, 5, num_known=2, labeled=labeled, params={"diversity": False})
    assert selection.values["n_unknown_centres"] == 2  # K clusters of the queried unknowns
    assert not np.allclose(selection.scores, np.sort(pool["ova_closed_entropy"][pool["det_pred"] < 2])[:5])


def test_eoal_fills_a_shortfall_from_the_rejected():
    pool = _eoal_pool()
    labeled = LabeledScores(PoolScores(np.array([900]), {k: v[:1] for k, v in pool.columns.items()}), np.array([0]))
    selection = query("eoal", pool, 58, num_known=2, labeled=labeled)
    assert len(selection.indices) == 58 and selection.values["n_filled"] == 3
    assert (pool["det_pred"][selection.indices[-3:]] == 2).all()


def test_cluster_loss_worked_example():
    centres = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    embeddings = torch.tensor([[0.0, 0.0]])
    # Own centre at distance 0, the other at 5: 0.1 * 0 + log(1 + exp(0 - 5)).
    assert float(cluster_loss(embeddings, centres, torch.tensor([0]))) == pytest.approx(math.log1p(math.exp(-5)))


def test_eoal_objective_with_and_without_unknowns():
    torch.manual_seed(1)
    spec = NetworkSpec("mlp", 3, 1, 8, {"hidden": 16}, head="ova")
    model = spec.build()
    x = torch.randn(40, 1, 8, 8)
    for labels in (torch.randint(0, 2, (40,)), torch.cat([torch.randint(0, 2, (30,)), torch.full((10,), 2)])):
        objective = OBJECTIVES.get("eoal")({"temperature": 0.5, "pareto_alpha": 0.8, "cluster_weight": 0.1, "clusters_per_class": 1},
                                           3, labels.numpy(), torch.device("cpu"), torch.Generator())
        objective.start_epoch(model, x, labels, 0, 1)
        loss = objective.loss(model, x, labels, torch.arange(40))
        assert torch.isfinite(loss)
        loss.backward()
    assert objective.centres is not None and len(objective.centres) == 2


@pytest.mark.parametrize(
    "head, objective, params, labels",
    [
        (None, "cross_entropy", {}, [0, 1, 2] * 8),
        ("loss_prediction", "learning_loss", {"weight": 1.0, "margin": 1.0, "detach_fraction": 0.6}, [0, 1, 2] * 8),
        ("ova", "eoal", {"temperature": 0.5, "pareto_alpha": 0.8, "cluster_weight": 0.1, "clusters_per_class": 1}, [0, 1, 2] * 8),
        ("projection", "simclr", {"temperature": 0.5}, [0] * 24),
    ],
)
def test_every_trainable_parameter_gets_a_gradient(head, objective, params, labels):
    # DistributedDataParallel (num_workers >= 2) fails on a trainable parameter that the loss never reaches.
    torch.manual_seed(0)
    y = torch.tensor(labels)
    num_outputs = 1 if objective == "simclr" else 3
    model = NetworkSpec("cnn", num_outputs, 1, 8, {"width": 4, "embedding": 8}, head=head).build()
    x = torch.randn(len(y), 1, 8, 8)
    loss_fn = OBJECTIVES.get(objective)(params, num_outputs, y.numpy(), torch.device("cpu"), torch.Generator())
    loss_fn.start_epoch(model, x, y, 0, 1)
    loss_fn.loss(model, x, y, torch.arange(len(y))).backward()
    unreached = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unreached


# ----------------------------------------------------------------------------- MQNet
def test_standardize_and_max_similarity():
    np.testing.assert_allclose(standardize(np.array([1.0, 3.0])), np.exp([-1.0, 1.0]))
    np.testing.assert_allclose(standardize(np.array([2.0, 2.0])), [1.0, 1.0])
    refs = np.array([[1.0, 0.0], [0.0, 1.0]])
    feats = np.array([[1.0, 0.0], [0.6, 0.8]])
    np.testing.assert_allclose(max_similarity(feats, refs), [1.0, 0.8])
    np.testing.assert_allclose(max_similarity(feats, refs, exclude=np.array([0, -1])), [0.0, 0.8])


def test_meta_network_is_monotone_in_both_inputs():
    meta = MetaNetwork(16, seed=4)
    grid = np.random.default_rng(0).normal(size=(200, 2))
    base = meta.score(grid)
    assert (meta.score(grid + [0.5, 0.0]) >= base - 1e-6).all()
    assert (meta.score(grid + [0.0, 0.5]) >= base - 1e-6).all()


def _mqnet_inputs(n: int, seed: int):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 6))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    p = rng.dirichlet([1, 1], n)
    return PoolScores(np.arange(n) + 1000 * seed, {"ssl_embedding": z.astype(np.float32), "probs": p.astype(np.float32)})


def test_mqnet_first_round_sums_then_trains_on_the_queried_set():
    pool, annotated = _mqnet_inputs(80, 1), _mqnet_inputs(10, 2)
    labeled = LabeledScores(annotated, np.array([0, 1] * 4 + [-1, -1]))
    context = QueryContext(num_known=2, rng=np.random.default_rng(0), params={}, labeled=labeled)
    first = get_strategy("mqnet").select(pool, 5, context)
    purity = max_similarity(pool["ssl_embedding"].astype(float), annotated["ssl_embedding"][:8].astype(float))
    expected = standardize(1 - pool["probs"].max(1)) + standardize(purity)
    np.testing.assert_allclose(first.scores, np.sort(expected)[::-1][:5], rtol=1e-6)
    assert set(first.carry) == {"last_query_ids", "last_query_inputs", "last_query_probs"}

    # Next round: last round's queries are now labeled; the meta-network trains on them.
    queried = pool.subset(first.indices)
    labeled2 = LabeledScores(
        PoolScores(np.concatenate([annotated.ids, queried.ids]), {k: np.concatenate([annotated[k], queried[k]]) for k in annotated.columns}),
        np.concatenate([labeled.labels, [0, -1, 1, 0, -1]]),
    )
    rest = pool.subset(np.setdiff1d(np.arange(80), first.indices))
    context2 = QueryContext(num_known=2, rng=np.random.default_rng(1), params={"meta_epochs": 5}, labeled=labeled2, carry=first.carry)
    second = get_strategy("mqnet").select(rest, 5, context2)
    assert second.values["meta_trained_on"] == 5
    assert {"w1", "b1", "w2", "b2", "last_query_ids"} <= set(second.carry)
    assert not np.isin(rest.ids[second.indices], queried.ids).any()


def test_mqnet_meta_network_learns_from_the_pre_query_classifier():
    """The reference trains the meta-network right after the query, with the classifier that chose
    the query. Next round the classifier has been retrained on those samples: its losses on them
    are training-set losses and must not be the targets."""
    pool, annotated = _mqnet_inputs(80, 1), _mqnet_inputs(10, 2)
    labeled = LabeledScores(annotated, np.array([0, 1] * 4 + [-1, -1]))
    first = get_strategy("mqnet").select(pool, 6, QueryContext(num_known=2, rng=np.random.default_rng(0), labeled=labeled))
    queried = pool.subset(first.indices)
    rest = pool.subset(np.setdiff1d(np.arange(80), first.indices))
    new_labels = np.array([0, -1, 1, 0, 1, -1])

    def second_round(retrained_probs: np.ndarray):
        columns = {"ssl_embedding": np.concatenate([annotated["ssl_embedding"], queried["ssl_embedding"]]),
                   "probs": np.concatenate([annotated["probs"], retrained_probs])}
        labeled2 = LabeledScores(PoolScores(np.concatenate([annotated.ids, queried.ids]), columns),
                                 np.concatenate([labeled.labels, new_labels]))
        context = QueryContext(num_known=2, rng=np.random.default_rng(1), params={"meta_epochs": 20}, labeled=labeled2, carry=first.carry)
        return get_strategy("mqnet").select(rest, 5, context)

    # The retrained classifier fits its new training samples perfectly, or not at all: no difference.
    fitted = np.where(np.eye(2, dtype=bool)[np.maximum(new_labels, 0)], 0.999, 0.001).astype(np.float32)
    a, b = second_round(fitted), second_round(fitted[:, ::-1].copy())
    assert a.values["meta_trained_on"] == 6
    np.testing.assert_array_equal(a.indices, b.indices)
    for key in ("w1", "b1", "w2", "b2"):
        np.testing.assert_array_equal(a.carry[key], b.carry[key])
    # What was carried is the query as the pre-query models scored it.
    np.testing.assert_allclose(first.carry["last_query_probs"], queried["probs"], rtol=1e-6)
    np.testing.assert_allclose(first.carry["last_query_inputs"][:, 0], 1 - queried["probs"].max(1), rtol=1e-6)


@pytest.mark.parametrize("strategy", ["ll", "mqnet"])
@pytest.mark.parametrize("key, value", [("margin", 0.0), ("weight", -1.0), ("detach_fraction", 5.0)])
def test_learning_loss_parameters_are_checked_wherever_they_are_used(strategy, key, value):
    from osal_ray.errors import InputError

    params = {"informativeness": "ll"} if strategy == "mqnet" else {}
    with pytest.raises(InputError) as info:
        get_strategy(strategy).resolve_params({**params, key: value})
    assert info.value.field == f"strategy_params.{strategy}.{key}"


def test_round_robin_with_many_clusters_takes_the_best_of_each_in_cluster_order():
    rng = np.random.default_rng(0)
    clusters = rng.integers(0, 500, size=5000)
    scores = rng.normal(size=5000)
    picked = round_robin(scores, clusters, 300)
    present = np.unique(clusters)[:300]
    assert clusters[picked].tolist() == present.tolist()
    assert all(scores[p] == scores[clusters == c].min() for p, c in zip(picked, present))


def test_nt_xent_rewards_matching_views():
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    aligned = nt_xent(torch.cat([z, z]), 0.5)
    shuffled = nt_xent(torch.cat([z, z[torch.randperm(8)]]), 0.5)
    assert float(aligned) < float(shuffled)


# ----------------------------------------------------------------------------- through Ray
@pytest.mark.ray
@pytest.mark.parametrize(
    "strategy, params, expected_networks",
    [
        ("ll", {}, {"classifier"}),
        ("eoal", {}, {"classifier", "detector"}),
        ("mqnet", {"ssl_epochs": 3, "meta_epochs": 5}, {"classifier", "ssl"}),
    ],
)
def test_two_round_run_on_digits(ray_session, digits_config, tmp_path, strategy, params, expected_networks):
    from osal_ray.experiment import prepare_experiment, run_experiment

    config = digits_config(tmp_path / strategy, strategies=[strategy], strategy_params={strategy: params})
    run_experiment(prepare_experiment(config, log=lambda _: None), log=lambda _: None)
    out = config.resolved_output_dir()
    rounds = pd.read_parquet(out / "rounds.parquet")
    assert rounds["round"].tolist() == [0, 1, 2] and (rounds["budget_spent"] == [0, 10, 20]).all()
    assert rounds["accuracy"].between(0.5, 1.0).all()
    runs = [p.name for p in (out / "checkpoints").iterdir()]
    assert {name.split("-")[3] for name in runs} == expected_networks
    if strategy == "mqnet":
        assert sum("-ssl-" in r for r in runs) == 1  # the encoder is trained once, in round 0
    queries = pd.read_parquet(out / "queries.parquet")
    assert len(queries) == 20 and queries["id"].is_unique


def test_first_neighbours_are_the_exact_cosine_nearest():
    from sklearn.metrics import pairwise_distances

    from osal_ray.clustering import first_neighbours

    x = np.random.default_rng(0).normal(size=(700, 8)).astype(np.float32)
    distances = pairwise_distances(x, x, metric="cosine")
    np.fill_diagonal(distances, np.inf)
    assert np.array_equal(first_neighbours(x, chunk=128), distances.argmin(axis=1))


def test_finch_above_the_exact_limit_uses_our_neighbours(monkeypatch):
    """EOAL's FINCH on more candidates than finch-clust computes exactly (it asked for an ANN package)."""
    from osal_ray import clustering

    x = np.concatenate([np.random.default_rng(1).normal(c, 0.1, size=(200, 4)) for c in (-3, 0, 3)]).astype(np.float32)
    monkeypatch.setattr(clustering, "EXACT_LIMIT", 300)  # level 0 (600 samples) here, its centroids exactly
    labels = clustering.finch_partition_at_most(x, 5)
    assert len(labels) == 600 and labels.max() < 5
