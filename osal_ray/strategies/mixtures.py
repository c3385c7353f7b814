"""Per-class two-component mixtures over maximum activation values (LfOSA, JSOSAL Eq. 4).

For each predicted known class the MAVs of its samples are modelled by a two-component
mixture; a sample's known-class probability is the posterior of the higher-mean component.

Cases the LfOSA reference code gets wrong or leaves open, decided here:

- a predicted class with fewer than 2 samples cannot hold a 2-component fit (the reference
  silently drops those samples): its samples get the uninformative probability 0.5;
- a mixture that collapses cannot tell known from unknown, and the class's samples also get
  0.5: all MAVs equal, two equal means, a component holding less than one sample, or a small
  component (weight below ``collapse_weight``) that is not a group of its own. A small
  component is judged by separation, not by weight alone: a real small known tail (8 clear
  knowns beside 1,990 low-MAV samples: weights 0.996 / 0.004) is kept, as the reference keeps
  it, while one or two stray values are not a group. Separation is Ashman's
  D = |mu_1 - mu_2| / sqrt((var_1 + var_2) / 2); D >= 2 (``min_separation``) is the usual mark
  of two distinct modes, and a group holds at least ``MIN_GROUP`` samples;
- fits are seeded (the reference's are not), so the same seed gives the same queries;
- a class larger than ``fit_sample_size`` (50k by default: CIFAR-sized pools are fitted on every
  sample) is fitted on a seeded random subsample of that size and the posterior is computed for
  every sample (a 1-d, 2-component fit's parameters are settled long before a million points;
  benchmarks/selection_speed.py reports the largest resulting probability difference).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The LfOSA reference: GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4).
LFOSA_GMM_OPTIONS = {"max_iter": 10, "tol": 1e-2, "reg_covar": 5e-4}
# sklearn's BayesianGaussianMixture defaults (the JSOSAL paper gives none): a Dirichlet-process
# weight prior with concentration 1/n_components, mean precision prior 1, mean and covariance
# priors from the data, 100 EM iterations, tol 1e-3, reg_covar 1e-6.
BGMM_DEFAULT_OPTIONS = {
    "weight_concentration_prior_type": "dirichlet_process",
    "weight_concentration_prior": None,
    "mean_precision_prior": None,
    "max_iter": 100,
    "tol": 1e-3,
    "reg_covar": 1e-6,
}
UNINFORMATIVE = 0.5
# A small mixture component is a group of its own (a tail of real knowns) only with this many members.
MIN_GROUP = 3


@dataclass(frozen=True)
class MixtureSettings:
    """Which mixture, its sklearn options, and how large classes and collapses are handled."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    fit_sample_size: int | None = 50_000
    collapse_weight: float = 0.01
    min_separation: float = 2.0


@dataclass(frozen=True)
class ClassFit:
    """The outcome for one predicted class."""

    probability: np.ndarray
    status: str  # "fitted", "too_small" or "collapsed"


def fit_class(values: np.ndarray, settings: MixtureSettings, seed: int) -> ClassFit:
    """Posterior of the higher-mean component for each value (see the module docstring for edge cases)."""
    n = len(values)
    if n < 2:
        return ClassFit(np.full(n, UNINFORMATIVE), "too_small")
    x = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    if np.ptp(x) == 0:
        return ClassFit(np.full(n, UNINFORMATIVE), "collapsed")
    fit_x = x
    if settings.fit_sample_size is not None and n > settings.fit_sample_size:
        fit_x = x[np.random.default_rng(seed).choice(n, settings.fit_sample_size, replace=False)]
    model = _make_mixture(settings, seed)
    with warnings.catch_warnings():
        # LfOSA's max_iter=10 rarely converges by sklearn's criterion; that is the reference setting.
        warnings.simplefilter("ignore")
        model.fit(fit_x)
    means = model.means_.ravel()
    if is_collapsed(model.weights_, means, model.covariances_.ravel(), len(fit_x), float(np.std(fit_x)), settings):
        return ClassFit(np.full(n, UNINFORMATIVE), "collapsed")
    return ClassFit(model.predict_proba(x)[:, int(np.argmax(means))], "fitted")


def ashman_d(means: np.ndarray, variances: np.ndarray) -> float:
    """Separation of two 1-d components: |mu_1 - mu_2| / sqrt((var_1 + var_2) / 2)."""
    return float(abs(means[0] - means[1]) / np.sqrt(max((variances[0] + variances[1]) / 2.0, 1e-300)))


def is_collapsed(weights: np.ndarray, means: np.ndarray, variances: np.ndarray, n: int, spread: float,
                 settings: MixtureSettings) -> bool:
    """Whether a two-component fit fails to describe two groups (see the module docstring)."""
    members = float(weights.min()) * n
    if abs(means[0] - means[1]) < 1e-6 * max(spread, 1e-12) or members < 1.0:
        return True
    if float(weights.min()) >= settings.collapse_weight:
        return False
    return members < MIN_GROUP or ashman_d(means, variances) < settings.min_separation


def _make_mixture(settings: MixtureSettings, seed: int):
    from sklearn.mixture import BayesianGaussianMixture, GaussianMixture

    options = {k: v for k, v in settings.options.items() if v is not None}
    if settings.kind == "gmm":
        return GaussianMixture(n_components=2, random_state=seed, **options)
    return BayesianGaussianMixture(n_components=2, random_state=seed, **options)


def known_probability(
    predicted: np.ndarray,
    mav: np.ndarray,
    num_known: int,
    settings: MixtureSettings,
    seed: int,
    n_jobs: int = 1,
) -> tuple[np.ndarray, dict[str, float]]:
    """Known-class probability of every sample: the per-class mixture posterior; 0 if predicted unknown.

    ``n_jobs`` > 1 fits the classes in that many worker processes (joblib/loky); the result
    does not depend on it. Returns the probabilities and counts of fitted/too-small/collapsed classes.
    """
    probability = np.zeros(len(mav), dtype=np.float64)
    groups = [(c, np.flatnonzero(predicted == c)) for c in range(num_known)]
    groups = [(c, members) for c, members in groups if len(members)]
    jobs = [(mav[members], settings, seed + 7919 * c) for c, members in groups]
    if n_jobs > 1 and len(jobs) > 1:
        from joblib import Parallel, delayed

        fits = Parallel(n_jobs=min(n_jobs, len(jobs)), backend="loky")(delayed(fit_class)(*job) for job in jobs)
    else:
        fits = [fit_class(*job) for job in jobs]
    counts = {"fitted": 0, "too_small": 0, "collapsed": 0}
    for (_, members), fit in zip(groups, fits):
        probability[members] = fit.probability
        counts[fit.status] += 1
    return probability, {f"classes_{k}": float(v) for k, v in counts.items()}


def resolve_jobs(n_jobs: int | None, n_samples: int, n_classes: int) -> int:
    """``n_jobs`` if given; otherwise worker processes once the fits outweigh handing them out.

    Measured with benchmarks/selection_speed.py: loky keeps its workers between rounds, so
    processes pay off from about 20k candidates, or from about 8 classes (one k-means
    initialisation per class dominates small fits).
    """
    if n_jobs is not None:
        return max(1, n_jobs)
    if n_classes < 2 or (n_samples < 20_000 and n_classes < 8):
        return 1
    return max(1, min(n_classes, os.cpu_count() or 1))
