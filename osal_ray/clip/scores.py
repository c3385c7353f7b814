"""CLIPN and VLPure scores on precomputed cosine similarities (pure numpy).

Inputs are cosine similarities between normalised image embeddings and per-class text
embeddings: ``cos_yes[N, K]`` (yes tower), ``cos_no[N, K]`` (no tower), and optionally
``cos_visual[N, K]`` (image vs per-class mean image embedding of the labeled ID samples).
``scale`` is the logit scale s (CLIPN: 100). Everything is computed in float64.
"""

from __future__ import annotations

import numpy as np

from osal_ray.errors import InputError

DEFAULT_SCALE_GRID = np.round(np.arange(1, 1001) * 0.1, 1)  # 0.1, 0.2, ..., 100.0
_GRID_CHUNK_ELEMENTS = 1_000_000  # [scales, N, K] elements per vectorised step


def clipn_probabilities(cos_yes: np.ndarray, cos_no: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``(p_class, p_yes)``, both ``[N, K]``.

    p_class[n, c] = exp(s cos_yes[n, c]) / sum_j exp(s cos_yes[n, j])
    p_yes[n, c]   = exp(s cos_yes[n, c]) / (exp(s cos_yes[n, c]) + exp(s cos_no[n, c]))
                  = sigmoid(s (cos_yes[n, c] - cos_no[n, c]))
    """
    cy, cn = _pair(cos_yes, cos_no)
    s = _check_scale(scale)
    return _softmax(s * cy), _sigmoid(s * (cy - cn))


def atd_scores(cos_yes: np.ndarray, cos_no: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """CLIPN "agreeing-to-differ": ``(p_id[N, K], p_ood[N])``.

    p_id[n, c] = p_yes[n, c] * p_class[n, c];  p_ood[n] = 1 - sum_c p_id[n, c].
    The in-distribution score is sum_c p_id[n, c] = 1 - p_ood[n].
    """
    p_class, p_yes = clipn_probabilities(cos_yes, cos_no, scale)
    p_id = p_yes * p_class
    return p_id, np.clip(1.0 - p_id.sum(axis=1), 0.0, 1.0)


def ctw_scores(cos_yes: np.ndarray, cos_no: np.ndarray, scale: float) -> np.ndarray:
    """CLIPN "competing-to-win" in-distribution score ``[N]``: p_yes[n, c*] with c* = argmax_c cos_yes[n, c]."""
    _, p_yes = clipn_probabilities(cos_yes, cos_no, scale)
    best = np.argmax(np.asarray(cos_yes), axis=1)
    return p_yes[np.arange(p_yes.shape[0]), best]


def visual_weights(cos_visual: np.ndarray, scale: float) -> np.ndarray:
    """VLPure Eq. 5-7 class weights ``[N, K]``: w[n, c] = softmax_c(s cos_visual[n, c])."""
    cv = _matrix(cos_visual, "cos_visual")
    return _softmax(_check_scale(scale) * cv)


def class_mean_embeddings(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class prototypes ``[K, D]``: the mean of the L2-normalised embeddings of a class, normalised again.

    A class without any labeled sample gets a zero row (every image's cosine with it is 0);
    :func:`vlpure_decision` is told which classes have a prototype and decides a class without
    one on its text evidence alone.
    """
    x = _matrix(embeddings, "embeddings")
    y = np.asarray(labels)
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise InputError("labels", f"need {x.shape[0]} integer labels, got shape {y.shape} dtype {y.dtype}")
    if num_classes < 1 or (y.size and (y.min() < 0 or y.max() >= num_classes)):
        raise InputError("labels", f"must lie in [0, {num_classes})")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sums = np.zeros((num_classes, x.shape[1]))
    np.add.at(sums, y, x)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    # Normalising the sum equals normalising the mean; empty classes stay exactly zero.
    return np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)


def vlpure_decision(
    cos_yes: np.ndarray, cos_no: np.ndarray, cos_visual: np.ndarray | None, scale: float,
    prototypes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """VLPure open-set decision: ``(id_score[N], ood_score[N], predicted_id[N] bool)``.

    q[n, c] = w[n, c] * p_id[n, c] with w = visual_weights(cos_visual, s), or q = p_id without
    ``cos_visual``; p_id and p_ood are the ATD quantities (:func:`atd_scores`).
    ood_score = p_ood / K with visual weights (w sums to one over the K classes, so q lives
    on a 1/K scale), else p_ood. predicted_id = max_c q > ood_score.
    id_score = max_c q: the decision compares the best class against OOD, so this is the
    quantity the rule thresholds, and ranking by id_score - ood_score follows the decision.
    ``prototypes[c]`` says whether class c has a visual prototype (a labeled sample); a class
    without one is decided on text evidence alone (see :func:`_decide`). None: every class has one.
    """
    cy, cn = _pair(cos_yes, cos_no)
    cv = None if cos_visual is None else _same_shape(cos_visual, cy, "cos_visual")
    id_score, ood = _decide(cy, cn, cv, np.array([_check_scale(scale)]), _prototypes(prototypes, cy.shape[1]))
    return id_score[0], ood[0], id_score[0] > ood[0]


def tune_scale(
    cos_yes: np.ndarray,
    cos_no: np.ndarray,
    cos_visual: np.ndarray | None,
    is_id: np.ndarray,
    grid: np.ndarray | None = None,
    prototypes: np.ndarray | None = None,
) -> tuple[float, float]:
    """VLPure Eq. 8 self-temperature tuning on labeled samples: ``(best_scale, best_balanced_accuracy)``.

    For each s in ``grid`` (default 0.1, 0.2, ..., 100.0) the :func:`vlpure_decision` at s is
    scored by balanced accuracy against ``is_id``: (TP / #ID + TN / #OOD) / 2. The best s
    wins; ties go to the smallest s. Without labeled OOD or without labeled ID the balanced
    accuracy is undefined and ``(nan, nan)`` is returned: the caller keeps its fixed scale.
    """
    cy, cn = _pair(cos_yes, cos_no)
    cv = None if cos_visual is None else _same_shape(cos_visual, cy, "cos_visual")
    truth = np.asarray(is_id)
    if truth.shape != (cy.shape[0],) or truth.dtype != bool:
        raise InputError("is_id", f"need a bool array of shape ({cy.shape[0]},), got {truth.dtype} {truth.shape}")
    scales = np.unique(np.asarray(DEFAULT_SCALE_GRID if grid is None else grid, dtype=np.float64))
    if scales.size == 0 or not np.all(np.isfinite(scales)) or scales[0] <= 0:
        raise InputError("clip.scale_grid", "needs positive, finite scales")
    n_id = int(truth.sum())
    if n_id == 0 or n_id == truth.size:
        return float("nan"), float("nan")
    present = _prototypes(prototypes, cy.shape[1])
    step = max(1, _GRID_CHUNK_ELEMENTS // cy.size)
    accuracy = np.empty(scales.size)
    for start in range(0, scales.size, step):
        id_score, ood = _decide(cy, cn, cv, scales[start : start + step], present)
        predicted = id_score > ood
        tpr = (predicted & truth).sum(axis=1) / n_id
        tnr = (~predicted & ~truth).sum(axis=1) / (truth.size - n_id)
        accuracy[start : start + step] = 0.5 * (tpr + tnr)
    best = int(np.argmax(accuracy))  # first maximum = smallest scale, the grid being sorted
    return float(scales[best]), float(accuracy[best])


def _decide(cy: np.ndarray, cn: np.ndarray, cv: np.ndarray | None, scales: np.ndarray,
            prototypes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(max_c q, ood_score)``, each ``[G, N]``, for every scale in ``scales`` at once.

    Written for speed (this runs over the whole tuning grid): with e_c = exp(s (cos_yes_c -
    max_j cos_yes_j)) and E = sum_c e_c, p_class_c = e_c / E and p_yes_c = 1 / (1 + exp(s
    (cos_no_c - cos_yes_c))), so p_id_c = u_c / E with u_c = e_c / (1 + exp(s (cos_no_c - cos_yes_c))).

    Visual weights need a class prototype; ``prototypes[c]`` False (no labeled sample of class c)
    gives that class the neutral weight 1/K, so it is decided on its text evidence alone:
    p_id_c / K against p_ood / K. The classes with prototypes share the rest, P/K, by the
    softmax of their visual similarities.
    """
    s = scales[:, None, None]
    with np.errstate(over="ignore"):  # exp overflow -> inf -> p_yes = 0, which is the limit
        u = np.exp(np.multiply(s, cy - cy.max(axis=1, keepdims=True)))
        odds = np.exp(np.multiply(s, cn - cy))
    total = u.sum(axis=2)
    odds += 1.0
    u /= odds
    p_ood = np.clip(1.0 - u.sum(axis=2) / total, 0.0, 1.0)
    if cv is None:
        return u.max(axis=2) / total, p_ood
    k = cy.shape[1]
    present = np.ones(k, dtype=bool) if prototypes is None else np.asarray(prototypes, dtype=bool)
    if present.all():
        e_vis = np.exp(np.multiply(s, cv - cv.max(axis=1, keepdims=True), out=odds), out=odds)
        vis_total = e_vis.sum(axis=2)
        e_vis *= u
        return e_vis.max(axis=2) / (total * vis_total), p_ood / k
    weights = np.full_like(odds, 1.0 / k)
    if present.any():
        shifted = cv[:, present] - cv[:, present].max(axis=1, keepdims=True)
        e_vis = np.exp(np.multiply(s, shifted))
        weights[:, :, present] = e_vis * (present.sum() / k) / e_vis.sum(axis=2, keepdims=True)
    weights *= u
    return weights.max(axis=2) / total, p_ood / k


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))  # never overflows
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _matrix(a: np.ndarray, field: str) -> np.ndarray:
    m = np.asarray(a, dtype=np.float64)
    if m.ndim != 2 or 0 in m.shape:
        raise InputError(field, f"need a non-empty 2-D array, got shape {m.shape}")
    return m


def _same_shape(a: np.ndarray, like: np.ndarray, field: str) -> np.ndarray:
    m = _matrix(a, field)
    if m.shape != like.shape:
        raise InputError(field, f"needs shape {like.shape} like cos_yes, got {m.shape}")
    return m


def _pair(cos_yes: np.ndarray, cos_no: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cy = _matrix(cos_yes, "cos_yes")
    return cy, _same_shape(cos_no, cy, "cos_no")


def _prototypes(prototypes: np.ndarray | None, k: int) -> np.ndarray | None:
    if prototypes is None:
        return None
    mask = np.asarray(prototypes)
    if mask.shape != (k,) or mask.dtype != bool:
        raise InputError("prototypes", f"need a bool array of shape ({k},), got {mask.dtype} {mask.shape}")
    return mask


def _check_scale(scale: float) -> float:
    s = float(scale)
    if not np.isfinite(s) or s <= 0:
        raise InputError("clip.scale", f"must be positive and finite, got {scale}")
    return s
