"""MQNet (Park et al., NeurIPS 2022): a meta-network balances purity and informativeness.

- Purity: the largest cosine similarity between a sample's self-supervised feature and the
  features of the labeled known samples. MQNet uses CSI; here the encoder is plain SimCLR
  (NT-Xent on two augmented views, trained once on the whole pool in round 0 with Ray Train).
  Simplification: CSI adds shifted-instance (rotation) positives and a shift classifier, which
  quadruples every batch; the purity mechanism, max similarity to the labeled known features,
  is the same, and SimCLR is what runs in minutes on a CPU. On frozen features
  (``features.extractor``; ``purity_source: features``, the default there) the representation is
  the stored ``features`` column itself, L2-normalised (with the ``simclr`` extractor, a SimCLR
  encoder trained once per job on the pool), and no encoder is trained per run.
- Informativeness: 1 - max softmax of the classifier (``conf``) or a learning-loss
  prediction (``ll``, the classifier then carries a loss-prediction module).
- Both are standardised as exp(z-score) over the set being scored.
- The meta-network, 2 -> hidden -> 1 with out = sigmoid(x @ relu(W1) + b1) @ relu(W2) + b2
  (monotone in both inputs), is trained on each query set with the ranking loss (margin 1)
  against the cross-entropy of the classifier that chose it, the target of an unknown (OOD)
  sample being 0. As in the reference (meta_train right after the query, before retraining),
  its inputs and targets are those of the *pre-query* models: the query's informativeness,
  purity and class probabilities are carried from the round that chose it, and the training
  happens when its labels are known, at the start of the next selection. Scores of the
  retrained models would be training-set losses (the classifier has just learned these
  samples). The first query round, with no queried set yet, ranks by the sum of the two
  standardised inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from osal_ray.params import added_later, positive_int, refuse
from osal_ray.strategies.base import NetworkOptions, PoolScores, QueryContext, Selection, register_strategy, top_k
from osal_ray.strategies.learning_loss import loss_prediction_network
from osal_ray.training.objective_params import LossPredictionParams


@dataclass(frozen=True)
class MQNetParams(LossPredictionParams):
    """MQNet: informativeness (``conf`` or ``ll``, with the learning-loss fields it inherits), the
    purity representation (``purity_source``: ``ssl``, a SimCLR encoder trained on the images in round 0;
    ``features``, the job's frozen features; a job with ``features.extractor`` defaults to the latter),
    the SimCLR encoder (epochs, temperature, batch size, projection size; ``ssl`` only) and the
    meta-network (hidden units, epochs, Adam learning rate, batch size)."""

    informativeness: str = "conf"
    purity_source: str = added_later("ssl", legacy="ssl")  # saved runs trained the SimCLR encoder
    ssl_epochs: int = 20
    ssl_temperature: float = 0.5
    ssl_batch_size: int = 256
    projection_dim: int = 128
    meta_hidden: int = 64
    meta_epochs: int = 100
    meta_lr: float = 1e-3
    meta_batch_size: int = 32

    def check(self, where: str) -> None:
        if self.informativeness not in ("conf", "ll"):
            refuse(where, "informativeness", "must be conf or ll")
        if self.purity_source not in PURITY_COLUMNS:
            refuse(where, "purity_source", f"must be {' or '.join(PURITY_COLUMNS)}")
        for key in ("ssl_epochs", "ssl_batch_size", "projection_dim", "meta_hidden", "meta_epochs", "meta_batch_size"):
            if not positive_int(getattr(self, key)):
                refuse(where, key, "must be a positive integer")
        if self.ssl_batch_size < 2:
            refuse(where, "ssl_batch_size", "must be at least 2 (contrastive pairs)")
        for key in ("ssl_temperature", "meta_lr"):
            if not getattr(self, key) > 0:
                refuse(where, key, "must be positive")
        super().check(where)


# The purity representation's score column per ``purity_source``.
PURITY_COLUMNS = {"ssl": "ssl_embedding", "features": "features_embedding"}


def _columns(params: MQNetParams) -> tuple[str, ...]:
    extra = ("predicted_loss",) if params.informativeness == "ll" else ()
    return (PURITY_COLUMNS[params.purity_source], "probs") + extra


def _networks(params: MQNetParams) -> dict[str, NetworkOptions]:
    networks = {}
    if params.purity_source == "ssl":
        networks["ssl"] = NetworkOptions(
            head="projection",
            head_kwargs={"dim": params.projection_dim},
            objective="simclr",
            objective_params={"temperature": params.ssl_temperature},
            train_overrides={"epochs": params.ssl_epochs, "batch_size": params.ssl_batch_size, "augment": False},
        )
    if params.informativeness == "ll":
        networks["classifier"] = loss_prediction_network(params)
    return networks


def standardize(values: np.ndarray) -> np.ndarray:
    """exp((x - mean) / std) over the set, as MQNet does; a constant set gives ones."""
    values = np.asarray(values, dtype=np.float64)
    std = values.std()
    return np.exp((values - values.mean()) / std) if std > 0 else np.ones_like(values)


def max_similarity(features: np.ndarray, references: np.ndarray, exclude: np.ndarray | None = None,
                   chunk: int = 8192) -> np.ndarray:
    """Largest dot product of each (normalised) feature with the references; ``exclude[i]`` is a
    reference row to ignore for feature i (-1: none)."""
    if len(references) == 0:
        return np.zeros(len(features))
    best = np.empty(len(features))
    for start in range(0, len(features), chunk):
        sims = features[start : start + chunk] @ references.T
        if exclude is not None:
            rows = np.flatnonzero(exclude[start : start + chunk] >= 0)
            sims[rows, exclude[start : start + chunk][rows]] = -np.inf
        best[start : start + chunk] = sims.max(axis=1) if sims.shape[1] else 0.0
    return np.where(np.isfinite(best), best, 0.0)


def _informativeness(scores: PoolScores, mode: str) -> np.ndarray:
    if mode == "ll":
        return np.asarray(scores["predicted_loss"], dtype=np.float64)
    return 1.0 - np.asarray(scores["probs"], dtype=np.float64).max(axis=1)


class MetaNetwork:
    """out = sigmoid(x @ relu(W1) + b1) @ relu(W2) + b2: non-decreasing in both inputs."""

    def __init__(self, hidden: int, seed: int, weights: Mapping[str, np.ndarray] | None = None) -> None:
        import torch

        generator = torch.Generator().manual_seed(seed)
        self.torch = torch
        if weights:
            self.params = {k: torch.tensor(np.asarray(weights[k]), dtype=torch.float32, requires_grad=True) for k in ("w1", "b1", "w2", "b2")}
        else:
            self.params = {
                "w1": (torch.randn(2, hidden, generator=generator) * 0.5).requires_grad_(),
                "b1": torch.zeros(hidden, requires_grad=True),
                "w2": (torch.randn(hidden, 1, generator=generator) * 0.5).requires_grad_(),
                "b2": torch.zeros(1, requires_grad=True),
            }

    def forward(self, x):
        p = self.params
        hidden = self.torch.sigmoid(x @ self.torch.relu(p["w1"]) + p["b1"])
        return (hidden @ self.torch.relu(p["w2"]) + p["b2"]).squeeze(1)

    def score(self, inputs: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.forward(self.torch.tensor(inputs, dtype=self.torch.float32)).numpy().astype(np.float64)

    def fit(self, inputs: np.ndarray, targets: np.ndarray, epochs: int, lr: float, batch_size: int, rng: np.random.Generator) -> None:
        from osal_ray.training.losses import ranking_loss

        torch = self.torch
        x = torch.tensor(inputs, dtype=torch.float32)
        y = torch.tensor(targets, dtype=torch.float32)
        optimizer = torch.optim.Adam(list(self.params.values()), lr=lr)
        for _ in range(epochs):
            order = rng.permutation(len(x))
            for start in range(0, len(order), batch_size):
                batch = torch.as_tensor(order[start : start + batch_size])
                if len(batch) < 2:
                    continue
                loss = ranking_loss(self.forward(x[batch]), y[batch], margin=1.0)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

    def weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy().copy() for k, v in self.params.items()}


def _job_defaults(config: Any) -> dict[str, Any]:
    """On frozen features, purity reads them (there is no image network to train an encoder beside)."""
    return {"purity_source": "features" if config.features.extractor is not None else "ssl"}


@register_strategy("mqnet", columns=_columns, needs_labeled=True, params=MQNetParams, networks=_networks,
                   job_defaults=_job_defaults)
def mqnet(pool: PoolScores, budget: int, context: QueryContext) -> Selection:
    """MQNet: a monotone meta-network over standardised purity (SimCLR or frozen features) and informativeness (CONF or LL)."""
    params = context.params
    labeled = context.labeled
    column = PURITY_COLUMNS[params.purity_source]
    known_rows = np.flatnonzero(labeled.labels >= 0) if labeled is not None else np.empty(0, dtype=np.int64)
    references = np.asarray(labeled.scores[column], dtype=np.float64)[known_rows] if labeled is not None else np.empty((0, 0))
    purity = max_similarity(np.asarray(pool[column], dtype=np.float64), references)
    informativeness = _informativeness(pool, params.informativeness)

    carry: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in context.carry.items()}
    meta = None
    values: dict[str, float] = {}
    delta = _last_query(carry, labeled)
    if delta is None and "w1" in carry:
        meta = MetaNetwork(params.meta_hidden, 0, carry)
    elif delta is not None:
        meta = MetaNetwork(params.meta_hidden, int(context.rng.integers(2**31 - 1)), carry if "w1" in carry else None)
        inputs_at_query, probs_at_query, labels = delta
        meta_inputs = np.stack([standardize(inputs_at_query[:, 0]), standardize(inputs_at_query[:, 1])], axis=1)
        true_class = np.clip(probs_at_query[np.arange(len(labels)), np.maximum(labels, 0)], 1e-12, 1.0)
        target = np.where(labels >= 0, -np.log(true_class), 0.0)
        meta.fit(meta_inputs, target, params.meta_epochs, params.meta_lr, params.meta_batch_size, context.rng)
        values["meta_trained_on"] = float(len(labels))

    inputs = np.stack([standardize(informativeness), standardize(purity)], axis=1)
    score = meta.score(inputs) if meta is not None else inputs.sum(axis=1)
    chosen = top_k(score, budget, rng=context.rng)
    if meta is not None:
        carry.update(meta.weights())
    carry.update({
        "last_query_ids": np.asarray(pool.ids[chosen], dtype=np.int64),
        # Raw (informativeness, purity) and class probabilities of the query under the pre-query models.
        "last_query_inputs": np.stack([informativeness[chosen], purity[chosen]], axis=1),
        "last_query_probs": np.asarray(pool["probs"], dtype=np.float64)[chosen],
    })
    return Selection(chosen, score[chosen], diagnostics={"purity": purity}, values=values, carry=carry)


def _last_query(carry: Mapping[str, np.ndarray], labeled) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(inputs, probabilities) of the previous query as its round scored it, and its labels now known.

    None before the first query, or for a state saved before the query-time values were carried
    (an older osal_ray): the meta-network then scores with the weights it has, untrained this round.
    """
    ids = carry.get("last_query_ids")
    if ids is None or not len(ids) or labeled is None or not len(labeled.labels) or "last_query_inputs" not in carry:
        return None
    order = np.argsort(labeled.scores.ids)
    positions = np.searchsorted(labeled.scores.ids, ids, sorter=order)
    positions = np.minimum(positions, len(order) - 1)
    found = labeled.scores.ids[order[positions]] == ids
    if not found.any():
        return None
    labels = labeled.labels[order[positions[found]]]
    return np.asarray(carry["last_query_inputs"], dtype=np.float64)[found], np.asarray(carry["last_query_probs"], dtype=np.float64)[found], labels
