"""BADGE, BALD with MC dropout, and osal on hand-made arrays and tiny networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from osal_ray.models import create_model
from osal_ray.models.heads import attach_head
from osal_ray.strategies import LabeledScores, PoolScores, QueryContext, get_strategy
from osal_ray.strategies.badge import gradient_factors, kmeans_pp
from osal_ray.strategies.calibration import fit_calibration, gather_evidence, record_evidence


def _explicit_gradient_embeddings(probs: np.ndarray, embedding: np.ndarray) -> np.ndarray:
    residual = probs.copy()
    residual[np.arange(len(probs)), probs.argmax(1)] -= 1.0
    return np.einsum("nk,nd->nkd", residual, embedding).reshape(len(probs), -1)


def test_kmeans_pp_on_factors_matches_the_explicit_gradient_embeddings():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], 60)
    embedding = rng.normal(size=(60, 5))
    chosen, drawn = kmeans_pp(*gradient_factors(probs, embedding), 8, np.random.default_rng(1))
    explicit = _explicit_gradient_embeddings(probs, embedding)
    # The first centre is the largest gradient norm, as in the reference.
    assert chosen[0] == int(np.argmax((explicit**2).sum(1)))
    # Every later draw's recorded distance is its squared distance to the nearest earlier centre.
    for step in range(1, 8):
        centres = explicit[chosen[:step]]
        expected = ((explicit[chosen[step]] - centres) ** 2).sum(1).min()
        assert drawn[step] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert len(set(chosen.tolist())) == 8


def test_kmeans_pp_weights_scale_the_draw_and_zero_weight_is_never_drawn_while_others_remain():
    rng = np.random.default_rng(2)
    probs = rng.dirichlet([1, 1], 40)
    embedding = rng.normal(size=(40, 4))
    weights = np.ones(40)
    weights[:20] = 0.0
    chosen, _ = kmeans_pp(*gradient_factors(probs, embedding), 20, np.random.default_rng(3), weights=weights)
    assert set(chosen.tolist()) == set(range(20, 40))


def test_kmeans_pp_keeps_away_from_centres_chosen_by_another_rule():
    rng = np.random.default_rng(5)
    probs = rng.dirichlet([1, 1, 1], 50)
    embedding = rng.normal(size=(50, 4))
    given = np.array([3, 17, 3])  # a repeated centre counts once
    chosen, drawn = kmeans_pp(*gradient_factors(probs, embedding), 6, np.random.default_rng(6), centres=given)
    explicit = _explicit_gradient_embeddings(probs, embedding)
    assert len(chosen) == 6 and not set(chosen.tolist()) & {3, 17}
    for step in range(6):  # each draw's distance counts the given centres as earlier ones
        centres = explicit[np.concatenate([[3, 17], chosen[:step]]).astype(int)]
        expected = ((explicit[chosen[step]] - centres) ** 2).sum(1).min()
        assert drawn[step] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    everything, _ = kmeans_pp(*gradient_factors(probs, embedding), 100, np.random.default_rng(6), centres=given)
    assert sorted(everything.tolist() + [3, 17]) == list(range(50))  # never more than the rest


def test_badge_prefers_uncertain_and_spread_samples():
    rng = np.random.default_rng(4)
    n = 300
    confident = np.tile([[0.999, 0.001]], (n, 1))
    uncertain_rows = rng.choice(n, 30, replace=False)
    confident[uncertain_rows] = [0.5, 0.5]
    pool = PoolScores(np.arange(n), {"probs": confident.astype(np.float32), "embedding": rng.normal(size=(n, 8)).astype(np.float32)})
    selection = get_strategy("badge").select(pool, 10, QueryContext(num_known=2, rng=np.random.default_rng(0)))
    assert np.isin(selection.indices, uncertain_rows).mean() >= 0.9


def _mc_dropout_network(p: float = 0.5, samples: int = 16):
    torch.manual_seed(0)
    backbone = create_model("mlp", 3, 1, 8, hidden=32)
    return attach_head("mc_dropout", backbone, p=p, samples=samples, sample_shape=(1, 8, 8))


def test_mc_dropout_head_trains_with_dropout_and_scores_independently_of_the_batch():
    model = _mc_dropout_network()
    x = torch.randn(10, 1, 8, 8)
    model.train()
    assert not torch.equal(model(x), model(x))  # dropout is on in training
    model.eval()
    torch.testing.assert_close(model(x), model.backbone(x))  # the evaluated network is the plain one
    with torch.no_grad():
        whole = model.forward_all(x).extras["bald"]
        parts = torch.cat([model.forward_all(x[:3]).extras["bald"], model.forward_all(x[3:]).extras["bald"]])
    torch.testing.assert_close(whole, parts)
    assert (whole >= 0).all() and (whole <= np.log(3) + 1e-6).all()


def test_bald_mutual_information_is_zero_without_dropout_disagreement():
    model = _mc_dropout_network(p=0.5)
    model.eval()
    with torch.no_grad():
        model.backbone.head.weight.zero_()  # every mask gives the same (uniform) prediction
        mi = model.forward_all(torch.randn(6, 1, 8, 8)).extras["bald"]
    torch.testing.assert_close(mi, torch.zeros(6), atol=1e-6, rtol=0)


def test_bald_strategy_trains_the_classifier_with_the_mc_dropout_head():
    options = get_strategy("bald").network_options({"dropout": 0.3, "mc_samples": 8})
    assert options["classifier"].head == "mc_dropout"
    assert dict(options["classifier"].head_kwargs) == {"p": 0.3, "samples": 8}


def _osal_pool(n: int, seed: int, margin_of_unknowns: float) -> tuple[PoolScores, np.ndarray]:
    """Half known, half unknown; MAVs, energy and embeddings are uninformative, the detector margin is low for unknowns."""
    rng = np.random.default_rng(seed)
    known = np.arange(n) % 2 == 0
    mav = np.where(known, rng.normal(6, 0.3, n), rng.normal(6, 0.3, n)).astype(np.float32)  # uninformative MAVs
    margin = np.where(known, rng.normal(0.0, 0.3, n), rng.normal(margin_of_unknowns, 0.3, n)).astype(np.float32)
    probs = rng.dirichlet([2, 2], n).astype(np.float32)
    columns = {
        "det_pred": rng.integers(0, 2, n), "det_mav": mav, "det_known_margin": margin,
        "probs": probs, "energy": rng.normal(3, 1, n).astype(np.float32), "embedding": rng.normal(size=(n, 6)).astype(np.float32),
    }
    return PoolScores(np.arange(n) + 10_000 * seed, columns), known


def test_osal_learns_from_its_own_queries_which_features_mean_unknown():
    """The first query round has no evidence (the prior decides); the next is calibrated on what the
    first round's queries turned out to be, using the features they had when they were chosen."""
    pool1, known1 = _osal_pool(400, 1, margin_of_unknowns=-3.0)
    osal = get_strategy("osal")
    first = osal.select(pool1, 40, QueryContext(num_known=2, rng=np.random.default_rng(0), round=1,
                                                labeled=LabeledScores(pool1.subset(np.arange(0)), np.empty(0, dtype=np.int64))))
    assert first.values["calibrated"] == 0.0
    queried = pool1.subset(first.indices)
    labeled = LabeledScores(queried, np.where(known1[first.indices], 0, -1))
    pool2, known2 = _osal_pool(400, 2, margin_of_unknowns=-3.0)
    second = osal.select(pool2, 40, QueryContext(num_known=2, rng=np.random.default_rng(1), round=2, labeled=labeled, carry=first.carry))
    assert second.values["calibrated"] == 1.0
    # The MAVs cannot tell; the detector margin can, and the calibration learnt it from round 1
    assert known2[second.indices].mean() >= 0.85
    probability = second.diagnostics["known_probability"]
    assert probability[known2].mean() > probability[~known2].mean() + 0.3


@pytest.mark.parametrize("share, surest", [(0.0, 0), (0.25, 10), (0.5, 20), (1.0, 40)])
def test_osal_spends_its_known_share_on_the_most_likely_known(share, surest):
    """``known_share`` of the budget goes to the highest known probabilities (LfOSA's pick, for
    recall); k-means++ spends the rest, kept away from them."""
    pool, _ = _osal_pool(400, 3, margin_of_unknowns=-3.0)
    context = QueryContext(num_known=2, rng=np.random.default_rng(0), round=1, params={"known_share": share},
                           labeled=LabeledScores(pool.subset(np.arange(0)), np.empty(0, dtype=np.int64)))
    selection = get_strategy("osal").select(pool, 40, context)
    probability = selection.diagnostics["known_probability"]
    assert len(selection.indices) == 40 == len(set(selection.indices.tolist()))
    if surest:
        rest = np.setdiff1d(np.arange(len(pool)), selection.indices[:surest])
        assert probability[selection.indices[:surest]].min() >= probability[rest].max()
    if surest < 40:  # the diverse part is not simply the next most likely
        top = np.argsort(-probability, kind="stable")[:40]
        assert set(selection.indices.tolist()) != set(top.tolist())


def test_osal_refuses_a_known_share_outside_0_1():
    from osal_ray.errors import InputError

    with pytest.raises(InputError, match="strategy_params.osal.known_share"):
        get_strategy("osal").resolve_params({"known_share": 1.5})


def test_calibration_evidence_is_the_query_time_features_of_samples_now_labeled():
    carry = record_evidence({}, np.array([5, 6, 7]), np.array([[1.0], [2.0], [3.0]]), round_index=1)
    carry = record_evidence(carry, np.array([8]), np.array([[4.0]]), round_index=2)
    labeled = LabeledScores(PoolScores(np.array([8, 6, 5]), {}), np.array([-1, 0, 1]))
    evidence = gather_evidence(carry, labeled, round_index=3)
    assert sorted(evidence.features.ravel().tolist()) == [1.0, 2.0, 4.0]  # id 7 has no label yet
    by_feature = dict(zip(evidence.features.ravel().tolist(), zip(evidence.known.tolist(), evidence.age.tolist())))
    assert by_feature == {1.0: (True, 1), 2.0: (True, 1), 4.0: (False, 0)}


def test_calibration_needs_both_outcomes():
    carry = record_evidence({}, np.arange(10), np.arange(10.0).reshape(-1, 1), round_index=1)
    all_known = LabeledScores(PoolScores(np.arange(10), {}), np.zeros(10, dtype=np.int64))
    assert fit_calibration(gather_evidence(carry, all_known, 2), decay=0.5) is None
    mixed = LabeledScores(PoolScores(np.arange(10), {}), np.where(np.arange(10) >= 5, 0, -1))
    calibrate = fit_calibration(gather_evidence(carry, mixed, 2), decay=0.5)
    low, high = calibrate(np.array([[0.0], [9.0]])).tolist()
    assert low < 0.5 < high


def test_calibration_never_turns_a_feature_against_its_meaning():
    """Every feature is built so that larger means more likely known. Evidence from last round's
    networks that says the opposite (a retrained detector's margins mean something else) can make
    a feature useless, never inverted."""
    carry = record_evidence({}, np.arange(40), np.stack([np.arange(40.0), np.zeros(40)], axis=1), round_index=1)
    inverted = LabeledScores(PoolScores(np.arange(40), {}), np.where(np.arange(40) < 20, 0, -1))
    calibrate = fit_calibration(gather_evidence(carry, inverted, 2), decay=0.5)
    low, high = calibrate(np.array([[0.0, 0.0], [39.0, 0.0]])).tolist()
    assert high >= low - 1e-9
    assert low == pytest.approx(0.5, abs=0.05)  # the base rate of the evidence


def test_osal_uses_clipn_purity_when_the_job_configures_clip_weights(digits_config):
    from osal_ray.experiment.plan import plan_experiment, stored_columns_needed

    osal = get_strategy("osal")
    plain = digits_config(strategies=["osal"])
    assert osal.params_from(plain)["clip"] is False
    assert "clip_cos_yes" not in osal.required_columns(osal.params_from(plain))
    assert "clip_embedding" not in stored_columns_needed(plan_experiment(plain))
    with_clip = digits_config(strategies=["osal"], **{"clip.checkpoint": "/weights/clipn.pt"})
    assert osal.params_from(with_clip)["clip"] is True
    assert {"clip_cos_yes", "clip_cos_no"} <= set(osal.required_columns(osal.params_from(with_clip)))
    assert "clip_embedding" in stored_columns_needed(plan_experiment(with_clip))
    # The job's own setting wins over the derived default.
    off = digits_config(strategies=["osal"], strategy_params={"osal": {"clip": False}}, **{"clip.checkpoint": "/weights/clipn.pt"})
    assert osal.params_from(off)["clip"] is False
