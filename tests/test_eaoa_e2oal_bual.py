"""EAOA, E2OAL and BUAL: each selection against an independent re-derivation of its reference code's
selection (written here from the reference code, in numpy/sklearn, on network outputs), the
precision-target state carried between rounds, the parameters, the networks they plan, their
objectives, and two rounds through Ray.

The reference code leaves its mixtures unseeded; ours are seeded from the first draw of the
context's generator (``seed``, ``seed + 1``, ...), and the re-derivations use those seeds.
Selections are compared as sets: the reference shuffles its picks before cutting to b (the
budgets here are multiples of K, so nothing is cut).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from osal_ray.errors import InputError
from osal_ray.models.base import NetworkOutput
from osal_ray.scoring.columns import COLUMNS, ColumnInputs
from osal_ray.strategies import LabeledScores, PoolScores, QueryContext, get_strategy
from test_quotas_precision import _reference_length  # the reference code's candidate-length loop

K = 3


def _columns(names, **outputs) -> dict[str, np.ndarray]:
    """Our registered score columns, computed from raw network outputs as the scoring actors do."""
    nets = {name: NetworkOutput(torch.as_tensor(o["logits"], dtype=torch.float32),
                                torch.as_tensor(o.get("embedding", np.zeros((len(o["logits"]), 1))), dtype=torch.float32),
                                (), {k: torch.as_tensor(v, dtype=torch.float32) for k, v in o.get("extras", {}).items()})
            for name, o in outputs.items()}
    inputs = ColumnInputs(nets, {}, {})
    return {name: COLUMNS.get(name).compute(inputs).numpy() for name in names}


def _first_seed(seed: int) -> int:
    return int(np.random.default_rng(seed).integers(2**31 - 1))


def _gmm_posterior(fit_on, values, components, seed, pick=np.argmax):
    gmm = GaussianMixture(n_components=components, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=seed)
    gmm.fit(np.asarray(fit_on, dtype=np.float64).reshape(-1, 1))
    return gmm.predict_proba(np.asarray(values, dtype=np.float64).reshape(-1, 1))[:, pick(gmm.means_)]


def _normalise(x):
    return (x - x.min()) / (x.max() - x.min())


def _logsumexp(x, axis=1):
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _per_class(pred, clean, info, n_candidates, n_query):
    """The reference's loop: per class the top ``n_candidates`` by ``clean``, of which the top ``n_query`` by ``info``."""
    chosen = []
    for i in range(K):
        members = np.flatnonzero(pred == i)
        top = members[np.argsort(-clean[members], kind="stable")[:n_candidates]]
        chosen += top[np.argsort(-info[top], kind="stable")[:n_query]].tolist()
    return set(chosen)


# ----------------------------------------------------------------------------- synthetic network outputs
def _outputs(seed: int, n: int = 600, n_labeled: int = 60):
    """Pool and labeled outputs: knowns (2/5 of the pool) and unknowns separated in every signal, with noise."""
    rng = np.random.default_rng(seed)
    total = n + n_labeled
    cls = rng.integers(0, K, total)
    known = rng.random(total) < 0.4
    known[n:] = rng.random(n_labeled) < 0.7
    centres = rng.normal(size=(K + 1, 16)) * 3
    embedding = centres[np.where(known, cls, K)] + rng.normal(size=(total, 16))
    det = rng.normal(size=(total, K + 1))
    det[np.arange(total), np.where(known, cls, K)] += np.where(known, 6.0, 3.0) + rng.normal(size=total)
    clf = rng.normal(size=(total, K)) * np.where(known, 1.0, 0.3)[:, None]
    clf[np.arange(total), cls] += np.where(known, rng.uniform(0, 5, total), 0.5)
    pseudo = rng.normal(size=(total, K))
    pseudo[~known, 0] += 4.0
    open_logits = np.hstack([clf + rng.normal(size=(total, K)), pseudo])
    neg = rng.normal(size=(total, K)) * np.where(known, 0.5, 2.0)[:, None]
    labels = np.where(known, cls, -1)
    return dict(n=n, det=det, embedding=embedding, clf=clf, open=open_logits, neg=neg, labels=labels, known=known)


def _split(o, columns):
    n = o["n"]
    pool = PoolScores(np.arange(n) + 1000, {k: v[:n] for k, v in columns.items()})
    labeled = LabeledScores(PoolScores(np.arange(len(o["labels"]) - n) + 5000, {k: v[n:] for k, v in columns.items()}),
                            o["labels"][n:])
    return pool, labeled


def _first_round(name: str, o, columns, seed: int = 0, params=None):
    """The strategy, its pool and labeled scores from outputs ``o``, and its first-round selection of 30."""
    pool, labeled = _split(o, columns(o))
    strategy = get_strategy(name)
    return strategy, pool, labeled, strategy.select(pool, 30, QueryContext(K, np.random.default_rng(seed), params or {},
                                                                          labeled=labeled))


def _with_previous(labeled: LabeledScores, known_share: float, count: int = 20):
    """The labeled set plus last round's ``count`` picks (ids 9000...), ``known_share`` of them known; their carry."""
    ids = np.arange(count) + 9000
    labels = np.where(np.arange(count) < round(known_share * count), 0, -1)
    columns = {k: np.concatenate([v, v[:count]]) for k, v in labeled.scores.columns.items()}
    both = LabeledScores(PoolScores(np.concatenate([labeled.scores.ids, ids]), columns), np.concatenate([labeled.labels, labels]))
    return both, {"last_query_ids": ids}


# ----------------------------------------------------------------------------- EAOA
def _reference_eaoa(o, budget, k1, seed, neighbours=250):
    n = o["n"]
    det, clf, feat, labels = o["det"], o["clf"], o["embedding"], o["labels"]
    energy = -_logsumexp(det[:n, :-1]) + np.log(1 + np.exp(det[:n, -1]))
    pred = clf[:n].argmax(1)
    masked = np.where(np.eye(K, dtype=bool)[pred], -1e5, clf[:n])  # outputs*(1-onehot) + bias
    aleatoric = -_logsumexp(clf[:n]) + _logsumexp(masked)
    s = _first_seed(seed)
    info = _gmm_posterior(_normalise(aleatoric), _normalise(aleatoric), 2, s + 2)
    clean = _gmm_posterior(_normalise(energy), _normalise(energy), 2, s, pick=np.argmin)
    unit = feat / np.linalg.norm(feat, axis=1, keepdims=True)
    sims = unit[n:] @ unit[:n].T  # labeled x unlabeled
    top = np.argsort(-sims, axis=1)[:, :neighbours]
    counts = np.zeros((n, K + 1))
    for row, lab in zip(top, labels[n:]):
        counts[row, lab if lab >= 0 else K] += 1
    knn = -_logsumexp(counts[:, :-1])
    clean = clean * _gmm_posterior(_normalise(knn), _normalise(knn), 2, s + 1, pick=np.argmin)
    quota = math.ceil(budget / K)
    return _per_class(pred, clean, info, quota * int(k1), quota)


def _eaoa_columns(o):
    return _columns(("det_energy", "det_embedding", "energy_gap", "probs"),
                    detector={"logits": o["det"], "embedding": o["embedding"]}, classifier={"logits": o["clf"]})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eaoa_equals_the_reference_selection(seed):
    o = _outputs(seed)
    strategy, pool, labeled, first = _first_round("eaoa", o, _eaoa_columns, seed)
    assert set(first.indices.tolist()) == _reference_eaoa(o, 30, 5, seed)
    assert first.values["k"] == 5 and first.values["n_filled"] == 0
    # Next round: last round's picks were 90% known (> 0.6 + 0.05), so k grows by 1.
    both, carry = _with_previous(labeled, 0.9)
    second = strategy.select(pool, 30, QueryContext(K, np.random.default_rng(seed), labeled=both, carry=carry))
    assert second.values["k"] == 6 and second.values["previous_precision"] == pytest.approx(0.9)
    o2 = dict(o, n=o["n"])
    o2["embedding"] = np.concatenate([o["embedding"], o["embedding"][o["n"] : o["n"] + 20]])
    o2["labels"] = np.concatenate([o["labels"][: o["n"]], both.labels])
    assert set(second.indices.tolist()) == _reference_eaoa(o2, 30, 6, seed)
    assert second.carry["k"][0] == 6 and len(second.carry["last_query_ids"]) == 30


def test_eaoa_k_and_neighbours_reach_the_selection():
    o = _outputs(3)
    pool, labeled = _split(o, _eaoa_columns(o))
    run = lambda params: get_strategy("eaoa").select(pool, 30, QueryContext(K, np.random.default_rng(0), params, labeled=labeled))  # noqa: E731
    assert run({"k": 2}).values["n_candidates"] == 2 * 10 * K
    assert run({"k": 2.7}).values["n_candidates"] == 2 * 10 * K  # int(k), as the reference
    assert set(run({"neighbours": 5}).indices.tolist()) == _reference_eaoa(o, 30, 5, 0, neighbours=5)


@pytest.mark.parametrize("params, precision, k", [
    ({}, 0.9, 6),  # above 0.6 + 0.05: one step up
    ({}, 0.3, 4),  # below 0.6 - 0.05: one step down
    ({"target_precision": 0.9}, 0.9, 5),  # on target
    ({"tolerance": 0.35}, 0.9, 5),  # within a wider tolerance
    ({"step": 2.5}, 0.9, 7.5),
    ({"k": 1.0}, 0.3, 1.0),  # never below 1
])
def test_eaoa_precision_parameters_move_k(params, precision, k):
    o = _outputs(8)
    pool, labeled = _split(o, _eaoa_columns(o))
    both, carry = _with_previous(labeled, precision)
    selection = get_strategy("eaoa").select(pool, 30, QueryContext(K, np.random.default_rng(0), params, labeled=both, carry=carry))
    assert selection.values["k"] == k and selection.values["n_candidates"] == int(k) * 10 * K


# ----------------------------------------------------------------------------- E2OAL
def _reference_js(p, q, eps=1e-8):
    p, q = p + eps, q + eps
    p, q = p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True)
    m = 0.5 * (p + q)
    kl = lambda a: (m * (np.log(m) - np.log(a))).sum(1)  # noqa: E731  F.kl_div(log a, m)
    return 0.5 * (kl(p) + kl(q))


def _reference_e2oal(o, budget, temp_target, seed, components=3):
    n, logits = o["n"], o["open"]
    maxlogit = logits[:, :K].max(1) - logits[:, K:].max(1)
    pred = logits[:n].argmax(1)
    base = np.exp(o["clf"][:n] - o["clf"][:n].max(1, keepdims=True))
    probs = base / base.sum(1, keepdims=True)
    u = _reference_js(probs, np.eye(K)[probs.argmax(1)]) * _reference_js(probs, np.full_like(probs, 1 / K))
    prob1 = _gmm_posterior(np.concatenate([maxlogit[n:], maxlogit[:n]]), maxlogit[:n], components, _first_seed(seed))
    length = _reference_length(prob1, u, temp_target * budget, budget)
    return _per_class(pred, maxlogit[:n], u, math.ceil(length / K), math.ceil(budget / K)), length


def _e2oal_columns(o):
    return _columns(("open_logits", "probs"), classifier={"logits": o["clf"], "extras": {"open_logits": o["open"]}})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_e2oal_equals_the_reference_selection(seed):
    o = _outputs(seed)
    strategy, pool, labeled, first = _first_round("e2oal", o, _e2oal_columns, seed)
    expected, length = _reference_e2oal(o, 30, 0.6, seed)
    assert set(first.indices.tolist()) == expected and first.values["candidate_length"] == length
    # Next round: 30% precision last round, so the working target rises to 0.6 + (0.6 - 0.3) = 0.9.
    both, carry = _with_previous(labeled, 0.3)
    second = strategy.select(pool, 30, QueryContext(K, np.random.default_rng(seed), labeled=both, carry=carry))
    assert second.values["working_target"] == pytest.approx(0.9)
    o2 = dict(o, open=np.concatenate([o["open"], o["open"][o["n"] : o["n"] + 20]]))
    expected, length = _reference_e2oal(o2, 30, min(0.6 + (0.6 - 0.3), 1), seed)  # the reference's arithmetic
    assert set(second.indices.tolist()) == expected and second.values["candidate_length"] == length
    assert second.carry["working_target"][0] == pytest.approx(0.9)


@pytest.mark.parametrize("params", [{"target_precision": 0.3}, {"components": 2}, {"components": 4, "target_precision": 0.8}])
def test_e2oal_target_and_components_reach_the_selection(params):
    o = _outputs(9)
    _, _, _, selection = _first_round("e2oal", o, _e2oal_columns, 0, params)
    target, components = params.get("target_precision", 0.6), params.get("components", 3)
    assert selection.values["working_target"] == target
    expected, length = _reference_e2oal(o, 30, target, 0, components)
    assert set(selection.indices.tolist()) == expected and selection.values["candidate_length"] == length


def test_e2oal_before_any_unknown_uses_the_largest_known_logit():
    o = _outputs(4)
    o["labels"] = np.abs(o["labels"])  # no labeled unknowns yet
    pool, labeled = _split(o, _e2oal_columns(o))
    selection = get_strategy("e2oal").select(pool, 30, QueryContext(K, np.random.default_rng(0), labeled=labeled))
    purity = o["open"][: o["n"], :K].max(1)
    assert set(selection.indices.tolist()) <= set(np.flatnonzero(np.isin(o["open"][: o["n"], :K].argmax(1), range(K))))
    assert np.corrcoef(purity, selection.diagnostics["known_probability"])[0, 1] > 0.5


# ----------------------------------------------------------------------------- BUAL
def _reference_certainty(prob, kind):
    if kind == "confidence":
        return prob.max(1)
    if kind == "margin":
        two = np.argpartition(prob, -2, axis=1)[:, -2:]
        return np.abs(prob[np.arange(len(prob)), two[:, 1]] - prob[np.arange(len(prob)), two[:, 0]])
    return np.sum(prob * np.log(prob + 1e-10), axis=1)


def _softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _reference_bual(o, budget, ratio, kind, with_unknowns=True):
    n = o["n"]
    aux = _softmax(o["det"][:n])
    keep = aux.argmax(1) != K if with_unknowns else np.ones(n, dtype=bool)
    rows = np.flatnonzero(keep)
    temp1 = _normalise(_reference_certainty(_softmax(o["neg"][:n])[rows], kind))
    temp2 = _normalise(_reference_certainty(_softmax(o["clf"][:n])[rows], kind))
    if with_unknowns:
        temp3 = _normalise(aux[rows, -1])
        temp = temp3 * temp1 + ratio * (1 - temp3) * temp2
    else:
        temp = temp1 + ratio * temp2
    return set(rows[np.argsort(temp)][:budget].tolist())


def _bual_columns(o):
    return _columns(("probs", "neg_probs", "det_pred", "det_unknown_prob"), classifier={"logits": o["clf"]},
                    negative={"logits": o["neg"]}, detector={"logits": o["det"]})


@pytest.mark.parametrize("kind", ["confidence", "margin", "entropy"])
def test_bual_equals_the_reference_selection(kind):
    o = _outputs(5)
    params = {"uncertainty": kind}
    strategy, pool, labeled, first = _first_round("bual", o, _bual_columns, 0, params)
    assert set(first.indices.tolist()) == _reference_bual(o, 30, 0.0, kind)
    both, carry = _with_previous(labeled, 0.4)
    second = strategy.select(pool, 30, QueryContext(K, np.random.default_rng(0), params, labeled=both, carry=carry))
    assert second.values["ratio"] == pytest.approx(0.4)
    assert set(second.indices.tolist()) == _reference_bual(o, 30, 0.4, kind)


def test_bual_before_any_unknown_keeps_every_sample():
    o = _outputs(6)
    o["labels"] = np.abs(o["labels"])
    pool, labeled = _split(o, _bual_columns(o))
    selection = get_strategy("bual").select(pool, 30, QueryContext(K, np.random.default_rng(0), labeled=labeled))
    assert set(selection.indices.tolist()) == _reference_bual(o, 30, 0.0, "confidence", with_unknowns=False)


def test_bual_fills_from_the_predicted_unknowns_when_too_few_remain():
    o = _outputs(7)
    o["det"][: o["n"] - 10, K] += 50  # all but 10 pool samples predicted unknown
    o["det"][o["n"] - 10 : o["n"], K] -= 50
    pool, labeled = _split(o, _bual_columns(o))
    selection = get_strategy("bual").select(pool, 30, QueryContext(K, np.random.default_rng(0), labeled=labeled))
    assert len(selection.indices) == 30 and selection.values["n_filled"] == 20


# ----------------------------------------------------------------------------- parameters and plans
@pytest.mark.parametrize("name, params, key", [
    ("eaoa", {"k": 0.5}, "k"),
    ("eaoa", {"step": -1}, "step"),
    ("eaoa", {"tolerance": -0.1}, "tolerance"),
    ("eaoa", {"target_precision": 1.5}, "target_precision"),
    ("eaoa", {"neighbours": 0}, "neighbours"),
    ("eaoa", {"energy_weight": -1}, "energy_weight"),
    ("eaoa", {"m_in": -5.0, "m_out": -7.0}, "m_in"),
    ("e2oal", {"pseudo_classes": -1}, "pseudo_classes"),
    ("e2oal", {"components": 1}, "components"),
    ("e2oal", {"target_precision": -0.1}, "target_precision"),
    ("e2oal", {"open_weight": -1.0}, "open_weight"),
    ("e2oal", {"open_loss": "mse"}, "open_loss"),
    ("bual", {"pool_sample": 0}, "pool_sample"),
    ("bual", {"uncertainty": "bald"}, "uncertainty"),
    ("bual", {"nl_fraction": 0.0}, "nl_fraction"),
    ("bual", {"nl_fraction": 1.5}, "nl_fraction"),
])
def test_impossible_parameters_are_refused(name, params, key):
    with pytest.raises(InputError) as raised:
        get_strategy(name).resolve_params(params)
    assert raised.value.field == f"strategy_params.{name}.{key}"


def test_defaults_are_the_reference_codes():
    assert get_strategy("eaoa").defaults == {"energy_weight": 0.01, "m_in": -25.0, "m_out": -7.0, "k": 5.0, "step": 1.0,
                                             "tolerance": 0.05, "target_precision": 0.6, "neighbours": 250}
    assert get_strategy("e2oal").defaults == {"open_weight": 1.0, "open_loss": "edl", "pseudo_classes": 0, "components": 3,
                                              "target_precision": 0.6}
    assert get_strategy("bual").defaults == {"nl_fraction": 0.5, "pool_sample": 5000, "uncertainty": "confidence"}


def test_the_plans_train_the_networks_the_methods_describe(digits_config, tmp_path):
    from osal_ray.experiment.plan import plan_strategy

    config = digits_config(tmp_path, strategy_params={"eaoa": {"m_out": -5.0}, "e2oal": {"pseudo_classes": 4},
                                                      "bual": {"pool_sample": 7, "nl_fraction": 0.25}})
    nets = {name: {r.name: r for r in plan_strategy(config, name).networks} for name in ("eaoa", "e2oal", "bual")}
    assert set(nets["eaoa"]) == {"classifier", "detector"}
    detector = nets["eaoa"]["detector"]
    assert detector.objective == "energy_margin" and detector.objective_params.m_out == -5.0
    assert detector.objective_params.temperature == config.detector.temperature and detector.include_invalid
    assert set(nets["e2oal"]) == {"classifier"}
    classifier = nets["e2oal"]["classifier"]
    assert classifier.head == "pseudo_classes" and classifier.head_kwargs == {"count": 4} and classifier.with_invalid
    assert classifier.num_outputs(2) == 2  # accuracy stays the K-way logits
    ids, labels = classifier.training_set([1, 2], [0, 1], [3], 2, lambda: np.arange(10))
    assert ids == [1, 2, 3] and labels == [0, 1, 2]
    assert set(nets["bual"]) == {"classifier", "detector", "negative"}
    negative = nets["bual"]["negative"]
    assert negative.objective == "negative_learning" and negative.objective_params.nl_fraction == 0.25
    ids, labels = negative.training_set([1, 2], [0, 1], [3], 2, lambda: np.arange(20))
    assert ids[:2] == [1, 2] and labels == [0, 1] + [2] * 7 and not set(ids[2:]) & {1, 2, 3}
    assert negative.training_set([1, 2], [0, 1], [3], 2, lambda: np.arange(20)) == (ids, labels)  # the same draw


# ----------------------------------------------------------------------------- objectives
def _mlp(outputs: int, head: str | None = None, **head_kwargs):
    from osal_ray.training.checkpoints import NetworkSpec

    return NetworkSpec("mlp", outputs, 1, 4, {"hidden": 8}, head=head, head_kwargs=head_kwargs).build()


def test_energy_margin_adds_the_hinges_only_with_unknowns():
    from osal_ray.training.objectives import OBJECTIVES

    torch.manual_seed(0)
    model, x = _mlp(K + 1), torch.randn(8, 1, 4, 4)
    params = {"energy_weight": 1.0, "m_in": -25.0, "m_out": -7.0, "temperature": 1.0}
    known_only = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    plain = OBJECTIVES.get("energy_margin")(params, K + 1, known_only.numpy(), torch.device("cpu"), torch.Generator())
    logits = model(x)
    assert torch.allclose(plain.loss(model, x, known_only, torch.arange(8)), torch.nn.functional.cross_entropy(logits, known_only))
    mixed = torch.tensor([0, 1, 2, 3, 3, 2, 0, 3])
    objective = OBJECTIVES.get("energy_margin")(params, K + 1, mixed.numpy(), torch.device("cpu"), torch.Generator())
    energy = -torch.logsumexp(logits[:, :K], dim=1)
    inside = mixed < K
    expected = (torch.nn.functional.cross_entropy(logits, mixed) + torch.relu(energy[inside] + 25).pow(2).mean()
                + torch.relu(-7 - energy[~inside]).pow(2).mean())
    assert torch.allclose(objective.loss(model, x, mixed, torch.arange(8)), expected)


def test_pseudo_classes_split_the_unknowns_by_kmeans_on_frozen_features():
    from osal_ray.training.checkpoints import NetworkSpec
    from osal_ray.training.objectives import OBJECTIVES

    torch.manual_seed(0)
    model = NetworkSpec("linear", K, 4, 1, {}, input="features", head="pseudo_classes", head_kwargs={"count": 2}).build()
    x = torch.cat([torch.randn(6, 4), torch.randn(5, 4) * 0.05 + torch.tensor([5.0, 0, 0, 0]),
                   torch.randn(5, 4) * 0.05 + torch.tensor([0, 5.0, 0, 0])])
    y = torch.tensor([0, 1, 2, 0, 1, 2] + [K] * 10)
    objective = OBJECTIVES.get("pseudo_classes")({"open_weight": 1.0, "open_loss": "cross_entropy"}, K, y.numpy(), torch.device("cpu"), torch.Generator().manual_seed(0))
    objective.start_epoch(model, x, y, 0, 3)
    targets = objective.targets
    assert targets[:6].tolist() == y[:6].tolist()
    assert len(set(targets[6:11].tolist())) == 1 and len(set(targets[11:].tolist())) == 1
    assert {int(targets[6]), int(targets[11])} == {K, K + 1}  # the two groups are the two pseudo-classes
    assert torch.isfinite(objective.loss(model, x, y, torch.arange(16)))


def test_the_evidential_loss_is_the_references():
    from scipy.special import digamma, gammaln

    from osal_ray.training.open_set_objectives import evidential_loss

    rng = np.random.default_rng(0)
    logits, targets = rng.normal(size=(7, 5)) * 4, rng.integers(0, 5, 7)
    alpha = np.exp(np.clip(logits, -10, 10)) + 1
    y = np.eye(5)[targets]
    nll = (y * (np.log(alpha.sum(1, keepdims=True) + 1e-8) - np.log(alpha + 1e-8))).sum(1)
    new = y + (1 - y) * alpha
    s = new.sum(1, keepdims=True)
    kl = (gammaln(s[:, 0]) - gammaln(5.0) - gammaln(new).sum(1) + ((new - 1) * (digamma(new) - digamma(s))).sum(1)) / 5
    for weight in (0.0, 0.3, 1.0):
        ours = evidential_loss(torch.as_tensor(logits), torch.as_tensor(targets), weight)
        assert float(ours) == pytest.approx(nll.mean() + weight * kl.mean(), rel=1e-9)


def test_negative_learning_switches_to_wrong_labels_and_resets_the_layer():
    from osal_ray.training.objectives import OBJECTIVES

    torch.manual_seed(0)
    model, x = _mlp(K), torch.randn(8, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 0, K, K, K, K])
    objective = OBJECTIVES.get("negative_learning")({"nl_fraction": 0.5}, K, y.numpy(), torch.device("cpu"),
                                                   torch.Generator().manual_seed(0))
    objective.start_epoch(model, x, y, 4, 10)
    assert not objective.negative
    assert torch.allclose(objective.loss(model, x, y, torch.arange(8)), torch.nn.functional.cross_entropy(model(x)[:4], y[:4]))
    before = model.head.weight.detach().clone()
    objective.start_epoch(model, x, y, 5, 10)
    assert objective.negative and not torch.equal(before, model.head.weight)
    loss = objective.loss(model, x, y, torch.arange(8))
    with torch.no_grad():
        terms = -torch.log(1 - torch.softmax(model(x), dim=1))  # the loss is a mean of some of these
    assert float(terms.min()) <= loss.item() <= float(terms.max())
    after = model.head.weight.detach().clone()
    objective.start_epoch(model, x, y, 6, 10)
    assert torch.equal(after, model.head.weight)  # reset once, when negative learning starts
    resumed = OBJECTIVES.get("negative_learning")({"nl_fraction": 0.5}, K, y.numpy(), torch.device("cpu"), torch.Generator())
    resumed.start_epoch(model, x, y, 7, 10)  # a run resumed past the switch keeps its layer
    assert resumed.negative and torch.equal(after, model.head.weight)


# ----------------------------------------------------------------------------- through Ray
@pytest.mark.ray
@pytest.mark.parametrize("strategy, params, expected_networks", [
    ("eaoa", {}, {"classifier", "detector"}),
    ("e2oal", {}, {"classifier"}),
    ("bual", {"pool_sample": 200}, {"classifier", "detector", "negative"}),
])
def test_two_round_run_on_digits(ray_session, digits_config, tmp_path, strategy, params, expected_networks):
    """Two rounds through Ray: the rounds, the networks trained, the queries (the check of the other methods)."""
    from test_ll_eoal_mqnet import test_two_round_run_on_digits as two_rounds

    two_rounds(ray_session, digits_config, tmp_path, strategy, params, expected_networks)
