"""Many independent 1-d two-component mixtures fitted at once (one per predicted class).

scikit-learn fits one ``GaussianMixture`` / ``BayesianGaussianMixture`` per class, each a Python loop
of EM iterations over an (n, 2) array. Here every class is a contiguous segment of one float64 array
and each EM iteration runs over all segments together: the per-class sufficient statistics
(sum r, sum r x, sum r x^2 per component, and the entropy of the responsibilities) are segment sums
(``np.add.reduceat``), and every per-class update is an array of length (number of classes). A class
stops at its own convergence; finished classes are dropped from the working arrays (compacted) once
they hold enough of the samples to be worth a copy.

It follows scikit-learn's algorithm step by step for what osal_ray configures (n_components=2,
covariance_type="full" in one dimension, n_init=1, init_params="kmeans", no warm start), so the
posteriors agree to rounding (tests/test_mixture_fit.py states and tests the tolerance, 1e-9):

- initialisation: ``KMeans(n_clusters=2, n_init=1, random_state=seed)``: k-means++ with the same
  draws from ``np.random.RandomState(seed)`` (the first centre by ``choice`` with uniform weights,
  then 2 local trials drawn in proportion to the squared distance, the trial with the lower
  potential kept), then Lloyd iterations (nearest centre, ties to centre 0) until the labels stop
  changing or the squared centre shift is at most 1e-4 x the variance of the data, at most 300
  iterations; the responsibilities start one-hot from the labels;
- EM: for each iteration an E-step, an M-step, and then the lower bound (GaussianMixture: the
  mean log-likelihood of the E-step; BayesianGaussianMixture: the variational bound with the new
  parameters); a class has converged when the bound changed by less than ``tol``; ``max_iter``
  iterations at most; component counts carry scikit-learn's 10 x machine epsilon, variances
  ``reg_covar``;
- Bayesian mixture: Dirichlet-process (stick-breaking, two sticks) or Dirichlet-distribution
  weight prior with concentration ``weight_concentration_prior`` (null: 1/2), Gaussian mean prior
  at the data mean with precision ``mean_precision_prior`` (null: 1), Wishart (1-d: gamma) precision
  prior with 1 degree of freedom and scale the data's variance (ddof 1), the variational
  updates of Bishop (10.58-10.63) as scikit-learn writes them (covariances normalised by the degrees
  of freedom).

Each class's data are shifted by their mean before the fit (every quantity involved is
shift-invariant). What differs from scikit-learn is rounding: sums in another order, variances
from raw moments of the shifted data (summed around the component mean instead where cancellation
could cost more than ~1e-9 of them), responsibilities as 1 / (1 + exp(-z)) from the log-ratio z of
the two components. A class whose variance is not above zero (only possible with ``reg_covar`` 0,
where scikit-learn raises) stops with ``ok`` False.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.special import betaln, digamma, gammaln

EPS10 = 10 * np.finfo(np.float64).eps
LOG_2PI = math.log(2 * math.pi)
LOG_2 = math.log(2.0)
KMEANS_TOL = 1e-4
KMEANS_MAX_ITER = 300
# Drop finished classes from the working arrays when they hold at least this share of its samples.
COMPACT_SHARE = 0.2
# Up to this many segments a Python loop over slices beats expanding per-segment values to every sample.
LOOP_SEGMENTS = 64
CLIP = 700.0


@dataclass(frozen=True)
class MixtureFits:
    """The fitted mixtures of S segments; per-component arrays have shape (S, 2).

    ``weights``, ``means`` and ``variances`` are what scikit-learn calls ``weights_``, ``means_`` and
    ``covariances_`` (raveled); ``spread`` is each segment's standard deviation (np.std of the
    fitted values); ``ratio`` gives the log-ratio of the components' weighted densities
    (see ``log_ratio``) in coordinates x - center. ``ok`` is False for a segment whose fit broke
    down (a variance not above zero: possible only with reg_covar 0).
    """

    kind: str
    center: np.ndarray
    spread: np.ndarray
    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    ratio: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    ok: np.ndarray

    def select(self, mask: np.ndarray) -> "MixtureFits":
        """The fits of the segments where ``mask``."""
        return MixtureFits(self.kind, *(getattr(self, f)[mask] for f in
                                         ("center", "spread", "weights", "means", "variances", "ratio", "n_iter", "converged", "ok")))

    def posterior(self, values: np.ndarray, counts: np.ndarray, component: np.ndarray) -> np.ndarray:
        """Posterior of ``component`` (one per segment) for concatenated segments of ``counts`` values."""
        counts = np.asarray(counts, dtype=np.int64)
        x = np.asarray(values, dtype=np.float64) - np.repeat(self.center, counts)
        z = log_ratio(x, counts, segment_starts(counts), self.ratio, np.empty_like(x), np.empty_like(x))
        # r_j = 1 / (1 + exp(-z_j)) with z_1 = z, z_0 = -z: exp overflows to inf for a posterior below 1e-308 (0).
        z *= np.repeat(np.where(np.asarray(component) == 1, -1.0, 1.0), counts)
        with np.errstate(over="ignore"):
            np.exp(z, out=z)
        z += 1.0
        return np.reciprocal(z, out=z)


def log_ratio(x: np.ndarray, counts: np.ndarray, starts: np.ndarray, ratio: np.ndarray, out: np.ndarray,
              scratch: np.ndarray) -> np.ndarray:
    """z = log(w_1 p_1(x) / w_0 p_0(x)) = k + h0 (x - m0)^2 - h1 (x - m1)^2, with ``ratio`` rows
    (m0, m1, h0, h1, k) per segment (h_j: half the component's precision, k: the rest). The squares
    around each mean keep z accurate however tight a component (expanding the quadratic would not)."""
    if len(counts) <= LOOP_SEGMENTS:
        for (m0, m1, h0, h1, k), start, n in zip(ratio.tolist(), starts.tolist(), counts.tolist()):
            xs, zs, ts = x[start:start + n], out[start:start + n], scratch[start:start + n]
            np.subtract(xs, m0, out=zs)
            zs *= zs
            zs *= h0
            np.subtract(xs, m1, out=ts)
            ts *= ts
            ts *= h1
            zs -= ts
            zs += k
        return out
    expand = lambda column: np.repeat(ratio[:, column], counts)  # noqa: E731
    np.subtract(x, expand(0), out=out)
    out *= out
    out *= expand(2)
    np.subtract(x, expand(1), out=scratch)
    scratch *= scratch
    scratch *= expand(3)
    out -= scratch
    out += expand(4)
    return out


class _Workspace:
    """The samples of the segments still iterating, contiguous per segment, plus per-sample arrays."""

    def __init__(self, x: np.ndarray, counts: np.ndarray, carried: dict[str, np.ndarray]):
        self.x = x
        self.counts = counts
        self.ids = np.arange(len(counts))
        self.live = np.ones(len(counts), dtype=bool)
        self.carried = carried
        self._layout()

    def _layout(self) -> None:
        self.starts = segment_starts(self.counts)
        self.n = int(self.counts.sum())
        self._buffers: dict[str, np.ndarray] = {}

    def buffer(self, name: str, dtype: Any = np.float64) -> np.ndarray:
        """A scratch array of n values, kept between iterations (no new pages per operation)."""
        if name not in self._buffers:
            self._buffers[name] = np.empty(self.n, dtype=dtype)
        return self._buffers[name]

    def sums(self, values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, self.starts)

    def expand(self, per_segment: np.ndarray) -> np.ndarray:
        return np.repeat(per_segment, self.counts)

    def finish(self, done: np.ndarray) -> None:
        """Mark segments (over the current ones) finished; drop the finished ones once they hold enough samples."""
        self.live &= ~done
        dead = int(self.counts[~self.live].sum())
        if not self.live.any() or dead < COMPACT_SHARE * self.n:
            return
        mask = np.repeat(self.live, self.counts)
        self.x = self.x[mask]
        self.carried = {k: v[mask] for k, v in self.carried.items()}
        self.counts = self.counts[self.live]
        self.ids = self.ids[self.live]
        self.live = np.ones(len(self.counts), dtype=bool)
        self._layout()


def segment_starts(counts: np.ndarray) -> np.ndarray:
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts


def fit_segments(values: np.ndarray, counts: np.ndarray, kind: str, options: Mapping[str, Any],
                 seeds: Sequence[int]) -> MixtureFits:
    """Fit a two-component mixture to each segment of ``values`` (concatenated, ``counts`` long each).

    ``kind`` is "gmm" (GaussianMixture) or "bgmm" (BayesianGaussianMixture); ``options`` are the
    estimator's keyword arguments that osal_ray sets (max_iter, tol, reg_covar; for bgmm also
    weight_concentration_prior_type, weight_concentration_prior, mean_precision_prior; None means
    scikit-learn's default); ``seeds`` the random_state of each segment. Every segment needs at
    least 2 values that are not all equal.
    """
    values = np.asarray(values, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.int64)
    if len(counts) == 0:
        empty = np.zeros((0, 2))
        return MixtureFits(kind, np.zeros(0), np.zeros(0), empty, empty, empty, np.zeros((0, 5)),
                           np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), np.zeros(0, dtype=bool))
    if counts.min() < 2 or counts.sum() != len(values):
        raise ValueError("every segment needs at least 2 values and the counts must cover the values")
    starts = segment_starts(counts)
    center = np.add.reduceat(values, starts) / counts
    x = values - np.repeat(center, counts)
    center = center + np.add.reduceat(x, starts) / counts  # a second pass removes the first mean's rounding
    x = values - np.repeat(center, counts)
    mean = np.add.reduceat(x, starts) / counts
    spread = np.sqrt(np.maximum(np.add.reduceat(x * x, starts) / counts - mean * mean, 0.0))
    labels = kmeans_labels(x, counts, seeds)
    if kind == "gmm":
        fits = _em(x, counts, labels, _Gmm(options, x, counts))
    elif kind == "bgmm":
        fits = _em(x, counts, labels, _Bgmm(options, x, counts))
    else:
        raise ValueError(f"unknown mixture kind {kind!r}")
    weights, means, variances, ratio, n_iter, converged, ok = fits
    return MixtureFits(kind, center, spread, weights, means + center[:, None], variances, ratio, n_iter, converged, ok)


# --------------------------------------------------------------------------------------------
# k-means initialisation (scikit-learn's KMeans(n_clusters=2, n_init=1): k-means++ then Lloyd)


def kmeans_labels(x: np.ndarray, counts: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
    """Cluster-1 membership (bool) of every value: k-means++ seeding, then Lloyd, per segment."""
    starts = segment_starts(counts)
    centers = np.empty((len(counts), 2))
    for s, (start, n) in enumerate(zip(starts.tolist(), counts.tolist())):
        centers[s] = _kmeans_plusplus(x[start:start + n], np.random.RandomState(seeds[s]))
    tol = np.add.reduceat(x * x, starts) / counts - (np.add.reduceat(x, starts) / counts) ** 2
    tol = np.maximum(tol, 0.0) * KMEANS_TOL
    return _lloyd(x, counts, centers, tol)


def _kmeans_plusplus(x: np.ndarray, random_state: np.random.RandomState) -> tuple[float, float]:
    n = len(x)
    first = x[random_state.choice(n, p=np.full(n, 1.0 / n))]
    closest = np.square(x - first)
    potential = closest.sum()
    trials = random_state.uniform(size=2) * potential
    candidates = np.minimum(np.searchsorted(np.cumsum(closest), trials), n - 1)
    potentials = [np.minimum(closest, np.square(x - x[c])).sum() for c in candidates]
    return float(first), float(x[candidates[int(np.argmin(potentials))]])


def _assign(ws: _Workspace, centers: np.ndarray) -> np.ndarray:
    """Nearest centre per value (True: strictly nearer centre 1), as c1^2 - 2 x c1 < c0^2 - 2 x c0."""
    c0, c1 = centers[:, 0], centers[:, 1]
    return ws.x * ws.expand(2.0 * (c1 - c0)) > ws.expand(c1 * c1 - c0 * c0)


def _lloyd(x: np.ndarray, counts: np.ndarray, centers: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """scikit-learn's Lloyd loop per segment: stop when the labels repeat (strict convergence) or the
    squared centre shift is within ``tol``; then the labels of the final centres."""
    result = np.zeros(len(x), dtype=bool)
    ws = _Workspace(x, counts, {"position": np.arange(len(x)), "previous": np.zeros(len(x), dtype=bool)})
    centers = centers.copy()
    total = np.add.reduceat(x, segment_starts(counts))
    for iteration in range(KMEANS_MAX_ITER):
        live = ws.live
        active = centers[ws.ids]
        labels = _assign(ws, active)
        n1 = ws.sums(labels.astype(np.float64))
        s1 = ws.sums(np.where(labels, ws.x, 0.0))
        n0 = ws.counts - n1
        s0 = total[ws.ids] - s1
        new = active.copy()
        # A cluster cannot empty here (two distinct centres on a line, each the mean of its side);
        # should rounding empty one, its centre stays where it was.
        np.divide(s0, n0, out=new[:, 0], where=n0 > 0)
        np.divide(s1, n1, out=new[:, 1], where=n1 > 0)
        shift = ((new - active) ** 2).sum(axis=1)
        centers[ws.ids[live]] = new[live]
        strict = live & (iteration > 0) & (ws.sums((labels != ws.carried["previous"]).astype(np.float64)) == 0)
        by_tol = live & ~strict & (shift <= tol[ws.ids])
        if iteration == KMEANS_MAX_ITER - 1:
            by_tol = live & ~strict
        if strict.any():
            mask = ws.expand(strict)
            result[ws.carried["position"][mask]] = labels[mask]
        if by_tol.any():
            mask = ws.expand(by_tol)
            result[ws.carried["position"][mask]] = _assign(ws, centers[ws.ids])[mask]
        ws.carried["previous"] = labels
        ws.finish(strict | by_tol)
        if not ws.live.any():
            break
    return result


# --------------------------------------------------------------------------------------------
# EM


def _e_step(ws: _Workspace, ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Responsibilities of the two components from z = log(w1 p1 / w0 p0); their segment sums
    (``_component_stats``) and the sum of their entropy.

    With e = exp(-z): r1 = 1 / (1 + e) and r0 = e r1, both to full relative precision however
    small; z is clipped at -CLIP so that e stays finite (r1 < 1e-300 there, as good as zero).
    The entropy -r0 log r0 - r1 log r1 = log(1 + e) + r0 z.
    """
    z = log_ratio(ws.x, ws.counts, ws.starts, ratio, ws.buffer("z"), ws.buffer("t"))
    np.maximum(z, -CLIP, out=z)
    e = np.negative(z, out=ws.buffer("e"))
    np.exp(e, out=e)
    r1 = np.add(e, 1.0, out=ws.buffer("r1"))
    entropy = np.log(r1, out=ws.buffer("t"))
    np.reciprocal(r1, out=r1)
    r0 = np.multiply(e, r1, out=e)
    z *= r0
    entropy += z
    total_entropy = ws.sums(entropy)
    stats = np.empty((len(ws.counts), 6))
    _component_stats(ws, r0, stats[:, :3], ws.buffer("t"))
    _component_stats(ws, r1, stats[:, 3:], ws.buffer("t"))
    return stats, total_entropy


def _component_stats(ws: _Workspace, r: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    """Per segment: nk = sum r + 10 eps (scikit-learn's), the mean sum(r x) / nk and C = sum r (x - mean)^2.

    C comes from raw moments, C = sum r x^2 - 2 mean sum r x + mean^2 sum r (the values are centred
    per segment); where it is below 1e-6 of sum r x^2, it could have lost more than ~1e-9 of its
    digits to cancellation and is summed around the mean instead."""
    x = ws.x
    total = ws.sums(r)
    np.multiply(r, x, out=scratch)
    first = ws.sums(scratch)
    scratch *= x
    second = ws.sums(scratch)
    nk = total + EPS10
    mean = first / nk
    centred = second - 2.0 * mean * first + mean * mean * total
    for i in np.flatnonzero(~(centred > 1e-6 * second)).tolist():
        start, n = int(ws.starts[i]), int(ws.counts[i])
        d = x[start:start + n] - mean[i]
        centred[i] = np.dot(r[start:start + n], d * d)
    out[:, 0], out[:, 1], out[:, 2] = nk, mean, centred


def _one_hot_stats(ws: _Workspace, labels: np.ndarray) -> np.ndarray:
    stats = np.empty((len(ws.counts), 6))
    one = labels.astype(np.float64)
    _component_stats(ws, 1.0 - one, stats[:, :3], np.empty(ws.n))
    _component_stats(ws, one, stats[:, 3:], np.empty(ws.n))
    return stats


def _moments(stats: np.ndarray, reg_covar: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's _estimate_gaussian_parameters for 2 components in 1-d: nk (+ 10 eps), means,
    variances (+ reg_covar), each (m, 2)."""
    nk = stats[:, [0, 3]]
    return nk, stats[:, [1, 4]], stats[:, [2, 5]] / nk + reg_covar


class _Model:
    """What both mixture kinds share: the log posterior ratio from each kind's per-component terms."""

    def _log_terms(self, p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def ratio(self, p: dict[str, np.ndarray]) -> np.ndarray:
        precision, constant = self._log_terms(p)
        return _ratio(precision, p["means"], constant)


class _Gmm(_Model):
    """GaussianMixture(n_components=2): parameters weights, means, variances (each (m, 2))."""

    def __init__(self, options: Mapping[str, Any], x: np.ndarray, counts: np.ndarray):
        self.max_iter = int(_option(options, "max_iter", 100))
        self.tol = float(_option(options, "tol", 1e-3))
        self.reg_covar = float(_option(options, "reg_covar", 1e-6))
        self.counts = counts

    def initial(self, stats: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
        nk, means, variances = _moments(stats, self.reg_covar)
        return {"weights": nk / self.counts[ids, None], "means": means, "variances": variances}

    def m_step(self, stats: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
        nk, means, variances = _moments(stats, self.reg_covar)
        return {"weights": nk / nk.sum(axis=1, keepdims=True), "means": means, "variances": variances}

    def _log_terms(self, p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        precision = 1.0 / p["variances"]
        constant = np.log(p["weights"]) - 0.5 * LOG_2PI + 0.5 * np.log(precision)
        return precision, constant

    def lower_bound(self, stats: np.ndarray, entropy: np.ndarray, before: dict[str, np.ndarray],
                    after: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
        """The mean log-likelihood under the E-step's parameters: sum_j sum_i r_ij l_j(x_i) + H, over n."""
        precision, constant = self._log_terms(before)
        return (_expected_log(stats, precision, before["means"], constant) + entropy) / self.counts[ids]

    def reported(self, p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return p["weights"], p["means"], p["variances"]


class _Bgmm(_Model):
    """BayesianGaussianMixture(n_components=2, covariance_type="full") in 1-d."""

    def __init__(self, options: Mapping[str, Any], x: np.ndarray, counts: np.ndarray):
        self.max_iter = int(_option(options, "max_iter", 100))
        self.tol = float(_option(options, "tol", 1e-3))
        self.reg_covar = float(_option(options, "reg_covar", 1e-6))
        self.process = _option(options, "weight_concentration_prior_type", "dirichlet_process") == "dirichlet_process"
        if not self.process and options.get("weight_concentration_prior_type") != "dirichlet_distribution":
            raise ValueError(f"unknown weight_concentration_prior_type {options['weight_concentration_prior_type']!r}")
        self.concentration = float(_option(options, "weight_concentration_prior", 0.5))
        self.mean_precision_prior = float(_option(options, "mean_precision_prior", 1.0))
        starts = segment_starts(counts)
        self.mean_prior = np.add.reduceat(x, starts) / counts
        centred = x - np.repeat(self.mean_prior, counts)
        # np.cov of the fit data (ddof 1): the covariance prior; 1 degree of freedom (n_features).
        self.covariance_prior = np.add.reduceat(centred * centred, starts) / (counts - 1)

    def initial(self, stats: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
        return self.m_step(stats, ids)

    def m_step(self, stats: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
        nk, xk, sk = _moments(stats, self.reg_covar)
        if self.process:
            alpha = 1.0 + nk
            beta = np.stack([self.concentration + nk[:, 1], np.full(len(nk), self.concentration)], axis=1)
        else:
            alpha = self.concentration + nk
            beta = np.zeros_like(nk)
        mean_precision = self.mean_precision_prior + nk
        mu0 = self.mean_prior[ids, None]
        means = (self.mean_precision_prior * mu0 + nk * xk) / mean_precision
        dof = 1.0 + nk
        diff = xk - mu0
        variances = (self.covariance_prior[ids, None] + nk * sk
                     + nk * self.mean_precision_prior / mean_precision * diff * diff) / dof
        return {"alpha": alpha, "beta": beta, "mean_precision": mean_precision, "means": means, "dof": dof,
                "variances": variances}

    def _log_weights(self, p: dict[str, np.ndarray]) -> np.ndarray:
        if self.process:
            alpha, beta = p["alpha"], p["beta"]
            stick = digamma(alpha) - digamma(alpha + beta)
            rest = digamma(beta[:, 0]) - digamma(alpha[:, 0] + beta[:, 0])
            return np.stack([stick[:, 0], stick[:, 1] + rest], axis=1)
        return digamma(p["alpha"]) - digamma(p["alpha"].sum(axis=1, keepdims=True))

    def _log_terms(self, p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        precision = 1.0 / p["variances"]
        dof = p["dof"]
        constant = (self._log_weights(p) - 0.5 * LOG_2PI + 0.5 * np.log(precision) - 0.5 * np.log(dof)
                    + 0.5 * (LOG_2 + digamma(0.5 * dof) - 1.0 / p["mean_precision"]))
        return precision, constant

    def lower_bound(self, stats: np.ndarray, entropy: np.ndarray, before: dict[str, np.ndarray],
                    after: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
        """scikit-learn's variational bound (constants dropped): the E-step's entropy with the new parameters."""
        dof = after["dof"]
        log_det = -0.5 * np.log(after["variances"]) - 0.5 * np.log(dof)
        log_wishart = -(dof * log_det + dof * 0.5 * LOG_2 + gammaln(0.5 * dof)).sum(axis=1)
        if self.process:
            log_norm_weight = -betaln(after["alpha"], after["beta"]).sum(axis=1)
        else:
            alpha = after["alpha"]
            log_norm_weight = gammaln(alpha.sum(axis=1)) - gammaln(alpha).sum(axis=1)
        return entropy - log_wishart - log_norm_weight - 0.5 * np.log(after["mean_precision"]).sum(axis=1)

    def reported(self, p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.process:
            alpha, beta = p["alpha"], p["beta"]
            total = alpha + beta
            weights = np.stack([alpha[:, 0] / total[:, 0], alpha[:, 1] / total[:, 1] * beta[:, 0] / total[:, 0]], axis=1)
        else:
            weights = p["alpha"]
        return weights / weights.sum(axis=1, keepdims=True), p["means"], p["variances"]


def _option(options: Mapping[str, Any], key: str, default: Any) -> Any:
    value = options.get(key)
    return default if value is None else value


def _ratio(precision: np.ndarray, means: np.ndarray, constant: np.ndarray) -> np.ndarray:
    """``log_ratio``'s rows for l_j(x) = constant_j - precision_j (x - mean_j)^2 / 2."""
    return np.stack([means[:, 0], means[:, 1], 0.5 * precision[:, 0], 0.5 * precision[:, 1],
                     constant[:, 1] - constant[:, 0]], axis=1)


def _expected_log(stats: np.ndarray, precision: np.ndarray, means: np.ndarray, constant: np.ndarray) -> np.ndarray:
    """sum_j sum_i r_ij l_j(x_i) from the segment sums, l_j with the E-step's parameters (``means``):
    sum r (x - a)^2 = C + (m - a) (2 S - R (m + a)) with S = m nk, R = nk - 10 eps."""
    total = np.zeros(len(stats))
    for j in (0, 1):
        nk, m, centred = stats[:, 3 * j], stats[:, 3 * j + 1], stats[:, 3 * j + 2]
        a = means[:, j]
        spread = centred + (m - a) * (2.0 * m * nk - (nk - EPS10) * (m + a))
        total += (nk - EPS10) * constant[:, j] - 0.5 * precision[:, j] * spread
    return total


def _valid(p: dict[str, np.ndarray]) -> np.ndarray:
    variances = p["variances"]
    return np.isfinite(variances).all(axis=1) & (variances > 0).all(axis=1)


def _em(x: np.ndarray, counts: np.ndarray, labels: np.ndarray, model) -> tuple:
    segments = len(counts)
    ws = _Workspace(x, counts, {})
    params = {k: np.array(v) for k, v in model.initial(_one_hot_stats(ws, labels), ws.ids).items()}
    lower = np.full(segments, -np.inf)
    n_iter = np.zeros(segments, dtype=np.int64)
    converged = np.zeros(segments, dtype=bool)
    ok = _valid(params)
    ws.finish(~ok)
    for iteration in range(1, model.max_iter + 1):
        if not ws.live.any():
            break
        ids = ws.ids
        before = {k: v[ids] for k, v in params.items()}
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            stats, entropy = _e_step(ws, model.ratio(before))
            after = model.m_step(stats, ids)
            bound = model.lower_bound(stats, entropy, before, after, ids)
        live = ws.live
        valid = _valid(after)
        update = live & valid
        for key, value in after.items():
            params[key][ids[update]] = value[update]
        change = bound - lower[ids]
        lower[ids[update]] = bound[update]
        n_iter[ids[live]] = iteration
        done = update & (np.abs(change) < model.tol)
        converged[ids[done]] = True
        broken = live & ~valid
        ok[ids[broken]] = False
        ws.finish(done | broken)
    weights, means, variances = model.reported(params)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = model.ratio(params)
    return weights, means, variances, ratio, n_iter, converged, ok
