"""E2OAL (Zong et al., 2026, arXiv 2603.07898): one classifier, the labeled unknowns as pseudo-classes.

No separate detector. The classifier carries an open head of K + m logits (head ``pseudo_classes``):
the labeled unknowns are split into m pseudo-classes by k-means on frozen features (the input
column when the classifier reads cached features, ``features:``) or else on its own embedding
(objective ``pseudo_classes``); its K-way logits are trained on the knowns and measure accuracy.

- Purity: the open head's largest known logit minus its largest pseudo-class logit (the largest
  known logit before any unknown is labeled). A 3-component GaussianMixture fitted on the purity
  of the labeled and the pool samples gives each pool sample the posterior of its highest component.
- Informativeness: JS(p, one-hot) x JS(p, uniform) of the K-way softmax p: largest between
  confident and uniform.
- Candidate size (``precision_target.candidate_length``): the shortest prefix of the most likely
  known whose b most informative have an expected known count <= working target x b; the working
  target starts at ``target_precision`` and moves by (target - achieved precision) every round.
- Per class predicted by the open head (a pseudo-class prediction is never a candidate): the
  ceil(length / K) purest, of which the ceil(b / K) most informative; shuffled and cut to b.

Against the reference code: its "JS divergence" is 0.5 (KL(m || p) + KL(m || q)) (``F.kl_div``'s
argument order), not 0.5 (KL(p || m) + KL(q || m)); the selection follows the code. The number of
pseudo-classes is a parameter here (``pseudo_classes``), where the reference searches it (ternary
search over k-means F1 against the labels, on CLIP features); the open head is trained with the
reference's evidential (EDL) loss by default (``open_loss``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from osal_ray.params import refuse
from osal_ray.strategies.base import NetworkOptions, PoolScores, QueryContext, Selection, register_strategy
from osal_ray.strategies.precision_target import adapt_target, candidate_length, carried_value, previous_precision, remember_query
from osal_ray.strategies.quotas import class_quota, fill_shortfall, per_class_picks
from osal_ray.training.objective_params import PseudoClassParams


@dataclass(frozen=True)
class E2oalParams(PseudoClassParams):
    """E2OAL: the open head's loss weight, ``pseudo_classes`` (m; 0: as many as the known classes), the
    purity mixture's ``components`` and the ``target_precision`` the candidate size tracks."""

    pseudo_classes: int = 0
    components: int = 3
    target_precision: float = 0.6

    def check(self, where: str) -> None:
        super().check(where)
        if isinstance(self.pseudo_classes, bool) or not isinstance(self.pseudo_classes, int) or self.pseudo_classes < 0:
            refuse(where, "pseudo_classes", "must be an integer >= 0 (0: as many as the known classes)")
        if isinstance(self.components, bool) or not isinstance(self.components, int) or self.components < 2:
            refuse(where, "components", "must be an integer >= 2")
        if not 0.0 <= self.target_precision <= 1.0:
            refuse(where, "target_precision", "must be in [0, 1]")


def _networks(params: E2oalParams) -> dict[str, NetworkOptions]:
    return {"classifier": NetworkOptions(head="pseudo_classes", head_kwargs={"count": params.pseudo_classes},
                                         objective="pseudo_classes", with_invalid=True,
                                         objective_params={k: getattr(params, k) for k in PseudoClassParams.names()})}


def open_purity(open_logits: np.ndarray, num_known: int, pseudo: bool) -> tuple[np.ndarray, np.ndarray]:
    """(purity, predicted class): largest known minus largest pseudo-class logit and the argmax over all
    K + m (``pseudo``); else the largest known logit and the argmax over the K."""
    logits = np.asarray(open_logits, dtype=np.float64)
    known = logits[:, :num_known]
    if not pseudo or logits.shape[1] <= num_known:
        return known.max(axis=1), known.argmax(axis=1)
    return known.max(axis=1) - logits[:, num_known:].max(axis=1), logits.argmax(axis=1)


def reference_js(p: np.ndarray, q: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """The reference code's divergence: 0.5 (KL(m || p) + KL(m || q)), m = (p + q) / 2, after adding ``eps``
    and renormalising each row."""
    p = (p + eps) / (p + eps).sum(axis=1, keepdims=True)
    q = (q + eps) / (q + eps).sum(axis=1, keepdims=True)
    m = 0.5 * (p + q)
    return 0.5 * ((m * (np.log(m) - np.log(p))).sum(axis=1) + (m * (np.log(m) - np.log(q))).sum(axis=1))


def informativeness(probs: np.ndarray) -> np.ndarray:
    """JS(p, one-hot of its argmax) x JS(p, uniform), with ``reference_js``."""
    p = np.asarray(probs, dtype=np.float64)
    one_hot = np.eye(p.shape[1])[p.argmax(axis=1)]
    return reference_js(p, one_hot) * reference_js(p, np.full_like(p, 1.0 / p.shape[1]))


def top_component_posterior(fit_on: np.ndarray, values: np.ndarray, components: int, seed: int) -> np.ndarray:
    """GaussianMixture(components, max_iter 10, tol 1e-2, reg_covar 5e-4) fitted on ``fit_on``: the posterior
    of its highest-mean component for ``values`` (0.5 when the fit values are constant)."""
    import warnings

    from sklearn.mixture import GaussianMixture

    x = np.asarray(fit_on, dtype=np.float64).reshape(-1, 1)
    if len(x) < components or np.ptp(x) == 0:
        return np.full(len(values), 0.5)
    model = GaussianMixture(n_components=components, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter=10 rarely converges: the reference setting
        model.fit(x)
    return model.predict_proba(np.asarray(values, dtype=np.float64).reshape(-1, 1))[:, int(np.argmax(model.means_.ravel()))]


@register_strategy("e2oal", columns=("open_logits", "probs"), needs_labeled=True, params=E2oalParams, networks=_networks)
def e2oal(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """E2OAL: pseudo-classes for the labeled unknowns; per predicted class the most informative of the purest, the candidate size tracking a precision target."""
    params: E2oalParams = context.params
    k = context.num_known
    labeled = context.labeled
    pseudo = labeled is not None and bool((labeled.labels < 0).any())
    purity, predicted = open_purity(pool["open_logits"], k, pseudo)
    fit_on = purity
    if labeled is not None and len(labeled.labels):
        fit_on = np.concatenate([open_purity(labeled.scores["open_logits"], k, pseudo)[0], purity])
    probability = top_component_posterior(fit_on, purity, params.components, int(context.rng.integers(2**31 - 1)))
    info = informativeness(pool["probs"])

    precision = previous_precision(context.carry, labeled)
    target = adapt_target(carried_value(context.carry, "working_target", params.target_precision), precision,
                          params.target_precision)
    length = candidate_length(probability, info, target * budget, budget)
    chosen, candidates = per_class_picks(predicted, purity, info, k, int(math.ceil(length / k)), class_quota(budget, k),
                                         budget, context.rng)
    chosen, n_filled = fill_shortfall(chosen, probability, budget, context.rng)
    values = {"candidate_length": float(length), "working_target": target, "n_filled": float(n_filled)}
    if precision is not None:
        values["previous_precision"] = precision
    return Selection(chosen, info[chosen], diagnostics={"known_probability": probability, "candidates": candidates},
                     values=values, carry=remember_query(context.carry, pool.ids[chosen], working_target=target))
