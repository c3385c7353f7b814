"""The vectorised per-class mixtures (osal_ray/strategies/mixture_fit.py) against scikit-learn's
estimators fitted one class at a time on the same data with the same seeds.

Stated tolerance: the known-class probabilities of the two backends differ by at most 1e-9
(POSTERIOR_TOL), and the fitted weights, means and variances by at most 1e-9 relative, with the
same number of EM iterations and the same convergence flag. The vectorised fit is scikit-learn's
algorithm with the same k-means++ draws, so what remains is rounding (other summation orders,
variances from shifted raw moments): about 1e-13 on the data below. A class whose lower bound
changes by an amount within rounding of ``tol`` could stop one iteration apart; no case here does.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from osal_ray.errors import InputError
from osal_ray.strategies import PoolScores, get_strategy, query
from osal_ray.strategies.mixture_fit import fit_segments, kmeans_labels
from osal_ray.strategies.mixtures import (
    BGMM_DEFAULT_OPTIONS,
    LFOSA_GMM_OPTIONS,
    BgmmParams,
    MixtureSettings,
    collapsed_mask,
    fit_class,
    is_collapsed,
    known_probability,
)

POSTERIOR_TOL = 1e-9
PARAMETER_RTOL = 1e-9
DIRICHLET_OPTIONS = BgmmParams(weight_concentration_prior_type="dirichlet_distribution",
                               weight_concentration_prior=2.0, mean_precision_prior=0.5).options()
KINDS = [("gmm", LFOSA_GMM_OPTIONS), ("bgmm", BGMM_DEFAULT_OPTIONS), ("bgmm", DIRICHLET_OPTIONS)]
KIND_IDS = ["gmm-lfosa", "bgmm-dirichlet-process", "bgmm-dirichlet-distribution"]


def _sklearn(values: np.ndarray, kind: str, options: dict, seed: int):
    from sklearn.mixture import BayesianGaussianMixture, GaussianMixture

    cls = GaussianMixture if kind == "gmm" else BayesianGaussianMixture
    model = cls(n_components=2, random_state=seed, **{k: v for k, v in options.items() if v is not None})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(np.asarray(values, dtype=np.float64).reshape(-1, 1))
    return model


def _classes(seed: int, sizes, separation: float, spread: float = 1.0, known_share: float = 0.4):
    """One array per class: a low (unknown) and a high (known) MAV mode, shifted per class."""
    rng = np.random.default_rng(seed)
    out = []
    for c, n in enumerate(sizes):
        known = rng.random(n) < known_share
        out.append(np.where(known, rng.normal(separation, spread, n), rng.normal(0.0, 1.0, n)) + 0.3 * c + 2.0)
    return out


SCENARIOS = {
    "separated": lambda seed: _classes(seed, [400, 1500, 60], separation=6.0),
    "overlapping": lambda seed: _classes(seed, [800, 2500], separation=1.2),
    "tiny": lambda seed: _classes(seed, [2, 3, 5, 8], separation=3.0),
    "small_tail": lambda seed: [np.concatenate([np.random.default_rng(seed).normal(2.0, 0.5, 1990),
                                                np.random.default_rng(seed + 1).normal(8.2, 0.3, 8)])],
    "duplicates": lambda seed: [np.round(v, 1) for v in _classes(seed, [700, 300], separation=2.5)],
    "float32": lambda seed: [v.astype(np.float32) for v in _classes(seed, [900], separation=3.0)],
    "many": lambda seed: _classes(seed, np.random.default_rng(seed).integers(2, 300, 40), separation=3.5),
}


@pytest.mark.parametrize("kind, options", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fits_match_sklearn_class_by_class(kind, options, scenario, seed):
    classes = SCENARIOS[scenario](seed)
    seeds = [seed * 1000 + 17 * c for c in range(len(classes))]
    values = np.concatenate(classes).astype(np.float64)
    counts = np.array([len(v) for v in classes])
    fits = fit_segments(values, counts, kind, options, seeds)
    assert fits.ok.all()
    for c, class_values in enumerate(classes):
        model = _sklearn(class_values, kind, options, seeds[c])
        assert fits.n_iter[c] == model.n_iter_ and fits.converged[c] == model.converged_
        np.testing.assert_allclose(fits.weights[c], model.weights_, rtol=PARAMETER_RTOL, atol=1e-12)
        np.testing.assert_allclose(fits.means[c], model.means_.ravel(), rtol=PARAMETER_RTOL, atol=1e-12)
        np.testing.assert_allclose(fits.variances[c], model.covariances_.ravel(), rtol=PARAMETER_RTOL, atol=1e-12)
        high = int(np.argmax(model.means_.ravel()))
        expected = model.predict_proba(np.asarray(class_values, dtype=np.float64).reshape(-1, 1))[:, high]
        got = fits.select(np.arange(len(classes)) == c).posterior(class_values, counts[c:c + 1], np.array([high]))
        assert np.abs(got - expected).max() <= POSTERIOR_TOL


@pytest.mark.parametrize("seed", [0, 3, 7, 11])
def test_kmeans_initialisation_is_sklearns(seed):
    from sklearn.cluster import KMeans

    classes = _classes(seed, [50, 1000, 333, 2], separation=2.0) + [np.array([1.0, 1.0, 1.0, 2.0, 2.0])]
    seeds = [seed + 5 * c for c in range(len(classes))]
    values = np.concatenate(classes)
    counts = np.array([len(v) for v in classes])
    centred = values - np.repeat([v.mean() for v in classes], counts)
    labels = kmeans_labels(centred, counts, seeds)
    start = 0
    for c, class_values in enumerate(classes):
        expected = KMeans(n_clusters=2, n_init=1, random_state=seeds[c]).fit(class_values.reshape(-1, 1)).labels_
        np.testing.assert_array_equal(labels[start:start + len(class_values)], expected == 1)
        start += len(class_values)


def _pool_columns(seed: int, n: int, k: int):
    rng = np.random.default_rng(seed)
    predicted = rng.integers(0, k + 1, n)
    known = rng.random(n) < 0.4
    mav = np.where(known, rng.normal(6.0, 1.3, n), rng.normal(3.0, 1.3, n)) + 0.2 * (predicted % 5)
    predicted[:3] = k - 1  # the last known class gets at least these; class 1 below gets exactly one sample
    predicted[predicted == 1] = 0
    predicted[5] = 1
    if k > 2:
        mav[predicted == 2] = 5.0  # a constant class
    return predicted, mav.astype(np.float32)


@pytest.mark.parametrize("kind, options", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("fit_sample_size", [None, 300])
def test_known_probability_matches_the_sklearn_backend(kind, options, fit_sample_size):
    predicted, mav = _pool_columns(4, 6000, 12)
    results = {}
    for backend in ("vectorised", "sklearn"):
        settings = MixtureSettings(kind, options, fit_sample_size=fit_sample_size, backend=backend)
        results[backend] = known_probability(predicted, mav, 12, settings, seed=21)
    (vectorised, counts), (reference, reference_counts) = results["vectorised"], results["sklearn"]
    assert counts == reference_counts
    assert counts["classes_too_small"] == 1 and counts["classes_collapsed"] >= 1
    assert np.abs(vectorised - reference).max() <= POSTERIOR_TOL
    assert (vectorised[predicted == 12] == 0).all() and vectorised[5] == 0.5 and (vectorised[predicted == 2] == 0.5).all()


@pytest.mark.parametrize("name, n_jobs", [("lfosa", 1), ("jsosal", 1), ("jsosal", 2), ("jsosal_no_entropy", 1)])
def test_both_backends_query_the_same_samples(name, n_jobs):
    predicted, mav = _pool_columns(9, 5000, 6)
    rng = np.random.default_rng(1)
    pool = PoolScores(np.arange(len(mav)), {
        "det_pred": predicted, "det_mav": mav, "det_known_margin": rng.normal(size=len(mav)).astype(np.float32),
        "entropy": rng.random(len(mav)).astype(np.float32),
    })
    vectorised = query(name, pool, 150, num_known=6, seed=4)
    reference = query(name, pool, 150, num_known=6, seed=4, params={"backend": "sklearn", "n_jobs": n_jobs})
    np.testing.assert_array_equal(vectorised.indices, reference.indices)
    assert np.abs(vectorised.diagnostics["known_probability"] - reference.diagnostics["known_probability"]).max() <= POSTERIOR_TOL
    assert vectorised.values == reference.values


def test_same_seed_same_output_and_the_seed_matters():
    predicted, mav = _pool_columns(2, 8000, 4)
    settings = MixtureSettings("bgmm", BGMM_DEFAULT_OPTIONS, fit_sample_size=500)
    first, counts = known_probability(predicted, mav, 4, settings, seed=8)
    again, counts_again = known_probability(predicted, mav, 4, settings, seed=8)
    np.testing.assert_array_equal(first, again)
    assert counts == counts_again
    other, _ = known_probability(predicted, mav, 4, settings, seed=9)
    assert not np.array_equal(first, other)  # another subsample and initialisation


def test_collapsed_classes_and_small_classes():
    bgmm = MixtureSettings("bgmm", BGMM_DEFAULT_OPTIONS)
    gmm = MixtureSettings("gmm", LFOSA_GMM_OPTIONS)
    constant = fit_class(np.full(50, 4.2), bgmm, 0)
    assert constant.status == "collapsed" and (constant.probability == 0.5).all()
    assert fit_class(np.array([3.0]), bgmm, 0).status == "too_small"
    assert fit_class(np.array([]), bgmm, 0).status == "too_small"
    two = fit_class(np.array([1.0, 2.0]), bgmm, 0)
    assert two.status == reference_status(np.array([1.0, 2.0]), bgmm)
    values = np.concatenate([np.random.default_rng(1).normal(5.0, 1.0, 2000), [60.0]])
    for settings, status in ((gmm, "collapsed"), (MixtureSettings("gmm", LFOSA_GMM_OPTIONS, collapse_weight=0.0), "fitted")):
        fit = fit_class(values, settings, 0)
        assert fit.status == status == reference_status(values, settings)
    rng = np.random.default_rng(0)
    tail = np.concatenate([rng.normal(2.0, 0.5, 1990), rng.normal(8.2, 0.3, 8)])
    for settings in (gmm, bgmm):
        fit = fit_class(tail, settings, 0)
        assert fit.status == "fitted" and fit.probability[-8:].min() > 0.9 and fit.probability[:1990].max() < 0.5


def reference_status(values: np.ndarray, settings: MixtureSettings) -> str:
    from dataclasses import replace

    return fit_class(values, replace(settings, backend="sklearn"), 0).status


def test_point_masses_without_reg_covar():
    """reg_covar 0 on two point masses: variances of ~1e-31 (scikit-learn's 10 eps in the counts keep
    them above zero); both backends fit and agree."""
    options = dict(LFOSA_GMM_OPTIONS, reg_covar=0.0)
    for values in (np.array([1.0] * 6 + [4.0] * 6), np.array([1.0] * 6 + [4.0, 4.1, 4.3, 3.9, 4.0, 4.2])):
        fit = fit_class(values, MixtureSettings("gmm", options), 0)
        reference = fit_class(values, MixtureSettings("gmm", options, backend="sklearn"), 0)
        assert fit.status == reference.status == "fitted"
        np.testing.assert_allclose(fit.probability, [0.0] * 6 + [1.0] * 6, atol=1e-12)
        assert np.abs(fit.probability - reference.probability).max() <= POSTERIOR_TOL


def test_the_vectorised_collapse_rule_is_is_collapsed():
    rng = np.random.default_rng(0)
    settings = MixtureSettings("gmm", collapse_weight=0.02, min_separation=2.0)
    s = 4000
    small = rng.choice([1e-5, 1e-3, 0.005, 0.015, 0.3], s)
    weights = np.stack([small, 1.0 - small], axis=1)
    means = np.stack([rng.normal(0.0, 3.0, s), rng.normal(0.0, 3.0, s)], axis=1)
    means[::7, 1] = means[::7, 0]  # equal means
    variances = rng.uniform(0.01, 4.0, (s, 2))
    n = rng.choice([50, 300, 2000], s)
    spread = rng.uniform(0.5, 2.0, s)
    expected = [is_collapsed(weights[i], means[i], variances[i], int(n[i]), float(spread[i]), settings) for i in range(s)]
    np.testing.assert_array_equal(collapsed_mask(weights, means, variances, n, spread, settings), expected)
    assert 0 < np.mean(expected) < 1


def test_the_backend_parameter_is_checked():
    assert get_strategy("jsosal").resolve_params({}).backend == "vectorised"
    assert get_strategy("lfosa").resolve_params({"backend": "sklearn"}).settings().backend == "sklearn"
    with pytest.raises(InputError) as info:
        get_strategy("osal").resolve_params({"backend": "torch"})
    assert info.value.field == "strategy_params.osal.backend"
