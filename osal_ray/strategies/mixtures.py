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

Two backends compute the same fits (``backend``): ``vectorised`` (the default) fits every class in
one pass of array operations (osal_ray/strategies/mixture_fit.py: scikit-learn's algorithm, the
same seeded k-means initialisation, posteriors equal to rounding: tests/test_mixture_fit.py),
``sklearn`` makes one scikit-learn estimator per class, optionally in ``n_jobs`` worker processes
(the reference). A vectorised fit that breaks down (a variance not above zero, possible only with
``reg_covar`` 0, where scikit-learn raises) counts as collapsed.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from osal_ray.params import Params, added_later, positive_int, refuse
from osal_ray.strategies.mixture_fit import fit_segments

BACKENDS = ("vectorised", "sklearn")


@dataclass(frozen=True)
class MixtureParams(Params):
    """What every mixture strategy shares: parallel fits (``n_jobs``, null: automatic; the sklearn
    backend only), the subsample a class's mixture is fitted on (``fit_sample_size``, null: all),
    when a small component counts as collapsed (weight below ``collapse_weight`` and Ashman's D
    below ``min_separation``), and how the fits run (``backend``: all classes at once,
    ``vectorised``, or one scikit-learn estimator per class, ``sklearn``)."""

    n_jobs: int | None = None
    fit_sample_size: int | None = 50_000
    collapse_weight: float = 0.01
    min_separation: float = 2.0
    backend: str = added_later("vectorised", legacy="sklearn")  # runs saved before it fitted with sklearn

    OPTION_KEYS = ("max_iter", "tol", "reg_covar")

    def check(self, where: str) -> None:
        if self.n_jobs is not None and not positive_int(self.n_jobs):
            refuse(where, "n_jobs", "must be null (automatic) or a positive integer")
        if self.fit_sample_size is not None and not (positive_int(self.fit_sample_size) and self.fit_sample_size >= 100):
            refuse(where, "fit_sample_size", "must be null (fit on every sample) or an integer >= 100")
        if not 0.0 <= self.collapse_weight < 0.5:
            refuse(where, "collapse_weight", "must be in [0, 0.5)")
        if not self.min_separation >= 0:
            refuse(where, "min_separation", "must be >= 0 (Ashman's D; 0 never calls a small component collapsed)")
        if self.backend not in BACKENDS:
            refuse(where, "backend", "must be vectorised (all classes in one pass) or sklearn (one estimator per class)")
        if not positive_int(getattr(self, "max_iter", 1)):
            refuse(where, "max_iter", "must be a positive integer")
        if not getattr(self, "tol", 1.0) > 0:
            refuse(where, "tol", "must be positive")
        if not getattr(self, "reg_covar", 0.0) >= 0:
            refuse(where, "reg_covar", "must be >= 0")

    def options(self) -> dict[str, Any]:
        """The sklearn mixture's keyword arguments."""
        return {key: getattr(self, key) for key in self.OPTION_KEYS}

    def settings(self) -> "MixtureSettings":
        """The settings ``known_probability`` takes."""
        return MixtureSettings(self.KIND, self.options(), self.fit_sample_size, self.collapse_weight, self.min_separation,
                               self.backend)


@dataclass(frozen=True)
class GmmParams(MixtureParams):
    """The LfOSA reference: GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4)."""

    max_iter: int = 10
    tol: float = 1e-2
    reg_covar: float = 5e-4

    KIND = "gmm"


@dataclass(frozen=True)
class BgmmParams(MixtureParams):
    """sklearn's BayesianGaussianMixture defaults (the JSOSAL paper gives none): a Dirichlet-process
    weight prior with concentration 1/n_components (null), mean precision prior 1 (null), mean and
    covariance priors from the data, 100 EM iterations, tol 1e-3, reg_covar 1e-6."""

    weight_concentration_prior_type: str = "dirichlet_process"
    weight_concentration_prior: float | None = None
    mean_precision_prior: float | None = None
    max_iter: int = 100
    tol: float = 1e-3
    reg_covar: float = 1e-6

    KIND = "bgmm"
    OPTION_KEYS = ("weight_concentration_prior_type", "weight_concentration_prior", "mean_precision_prior",
                   "max_iter", "tol", "reg_covar")

    def check(self, where: str) -> None:
        super().check(where)
        if self.weight_concentration_prior_type not in ("dirichlet_process", "dirichlet_distribution"):
            refuse(where, "weight_concentration_prior_type", "must be dirichlet_process or dirichlet_distribution")
        for key in ("weight_concentration_prior", "mean_precision_prior"):
            if getattr(self, key) is not None and not getattr(self, key) > 0:
                refuse(where, key, "must be null (sklearn's default) or positive")


LFOSA_GMM_OPTIONS = GmmParams().options()
BGMM_DEFAULT_OPTIONS = BgmmParams().options()
UNINFORMATIVE = 0.5
# A small mixture component is a group of its own (a tail of real knowns) only with this many members.
MIN_GROUP = 3


@dataclass(frozen=True)
class MixtureSettings:
    """Which mixture, its sklearn options, how large classes and collapses are handled, and the backend."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    fit_sample_size: int | None = MixtureParams.fit_sample_size
    collapse_weight: float = MixtureParams.collapse_weight
    min_separation: float = MixtureParams.min_separation
    backend: str = MixtureParams.backend


@dataclass(frozen=True)
class ClassFit:
    """The outcome for one predicted class."""

    probability: np.ndarray
    status: str  # "fitted", "too_small" or "collapsed"


def fit_class(values: np.ndarray, settings: MixtureSettings, seed: int) -> ClassFit:
    """Posterior of the higher-mean component for each value (see the module docstring for edge cases)."""
    if settings.backend == "vectorised" and len(values) >= 2:
        probability, counts = _known_probability_vectorised(np.zeros(len(values), dtype=np.int64), values, 1, settings, seed)
        return ClassFit(probability, next(k for k, v in counts.items() if v)[len("classes_"):])
    return _fit_class_sklearn(values, settings, seed)


def _fit_class_sklearn(values: np.ndarray, settings: MixtureSettings, seed: int) -> ClassFit:
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


def collapsed_mask(weights: np.ndarray, means: np.ndarray, variances: np.ndarray, n: np.ndarray, spread: np.ndarray,
                   settings: MixtureSettings) -> np.ndarray:
    """``is_collapsed`` for many fits at once (arrays of shape (S, 2) and (S,))."""
    smallest = weights.min(axis=1)
    members = smallest * n
    gap = np.abs(means[:, 0] - means[:, 1])
    collapsed = (gap < 1e-6 * np.maximum(spread, 1e-12)) | (members < 1.0)
    small = ~collapsed & (smallest < settings.collapse_weight)
    separation = gap / np.sqrt(np.maximum((variances[:, 0] + variances[:, 1]) / 2.0, 1e-300))
    return collapsed | (small & ((members < MIN_GROUP) | (separation < settings.min_separation)))


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

    With the sklearn backend, ``n_jobs`` > 1 fits the classes in that many worker processes
    (joblib/loky); the result does not depend on it (the vectorised backend ignores it). Returns the
    probabilities and counts of fitted/too-small/collapsed classes.
    """
    if settings.backend == "vectorised":
        return _known_probability_vectorised(predicted, mav, num_known, settings, seed)
    probability = np.zeros(len(mav), dtype=np.float64)
    groups = [(c, np.flatnonzero(predicted == c)) for c in range(num_known)]
    groups = [(c, members) for c, members in groups if len(members)]
    jobs = [(mav[members], settings, seed + 7919 * c) for c, members in groups]
    if n_jobs > 1 and len(jobs) > 1:
        from joblib import Parallel, delayed

        fits = Parallel(n_jobs=min(n_jobs, len(jobs)), backend="loky")(delayed(_fit_class_sklearn)(*job) for job in jobs)
    else:
        fits = [_fit_class_sklearn(*job) for job in jobs]
    counts = {"fitted": 0, "too_small": 0, "collapsed": 0}
    for (_, members), fit in zip(groups, fits):
        probability[members] = fit.probability
        counts[fit.status] += 1
    return probability, {f"classes_{k}": float(v) for k, v in counts.items()}


def _known_probability_vectorised(predicted: np.ndarray, mav: np.ndarray, num_known: int, settings: MixtureSettings,
                                  seed: int) -> tuple[np.ndarray, dict[str, float]]:
    """All classes' mixtures in one vectorised fit (mixture_fit.fit_segments); the same classes,
    seeds, subsamples and collapse rules as one fit per class."""
    predicted = np.asarray(predicted)
    mav = np.asarray(mav)
    probability = np.zeros(len(mav), dtype=np.float64)
    candidates = np.flatnonzero((predicted >= 0) & (predicted < num_known))
    classes = predicted[candidates].astype(np.int64)
    order = np.argsort(classes.astype(np.int16) if num_known <= np.iinfo(np.int16).max else classes, kind="stable")
    members = candidates[order]  # by class, each class in pool order (as np.flatnonzero(predicted == c))
    sizes = np.bincount(classes, minlength=num_known)[:num_known]
    present = np.flatnonzero(sizes)
    sizes = sizes[present]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    values = mav[members].astype(np.float64)
    counts = {"fitted": 0, "too_small": int((sizes < 2).sum()), "collapsed": 0}
    large = sizes >= 2
    constant = np.zeros(len(sizes), dtype=bool)
    if large.any():
        constant[large] = (np.maximum.reduceat(values, starts)[large] == np.minimum.reduceat(values, starts)[large])
    fit = np.flatnonzero(large & ~constant)
    counts["collapsed"] += int(constant.sum())
    probability[members] = UNINFORMATIVE
    if len(fit):
        seeds = [seed + 7919 * int(c) for c in present[fit]]
        limit = settings.fit_sample_size
        pieces, fit_counts = [], np.empty(len(fit), dtype=np.int64)
        for i, (s, start, n) in enumerate(zip(seeds, starts[fit].tolist(), sizes[fit].tolist())):
            piece = values[start:start + n]
            if limit is not None and n > limit:
                piece = piece[np.random.default_rng(s).choice(n, limit, replace=False)]
            pieces.append(piece)
            fit_counts[i] = len(piece)
        fit_values = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        fits = fit_segments(fit_values, fit_counts, settings.kind, settings.options, seeds)
        collapsed = ~fits.ok | collapsed_mask(fits.weights, fits.means, fits.variances, fit_counts, fits.spread, settings)
        counts["collapsed"] += int(collapsed.sum())
        counts["fitted"] += int((~collapsed).sum())
        keep = fit[~collapsed]
        if len(keep):
            mask = np.repeat(np.isin(np.arange(len(sizes)), keep), sizes)
            high = np.argmax(fits.means[~collapsed], axis=1)
            kept_fits = fits.select(~collapsed)
            probability[members[mask]] = kept_fits.posterior(values[mask], sizes[keep], high)
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
