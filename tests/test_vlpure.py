"""VLPure-AL: the strategy on hand-made similarities, and the whole plumbing through Ray on digits with a
tiny CLIPN of random weights (embeddings once per job, similarities every round, a linear probe)."""

from __future__ import annotations

import math

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch

from osal_ray.clip.loading import register_model_config, save_clipn_checkpoint
from osal_ray.clip.model import CLIPN
from osal_ray.clip.scores import vlpure_decision
from osal_ray.errors import InputError
from osal_ray.strategies import LabeledScores, PoolScores, QueryContext, get_strategy

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _similarities(n_id: int, n_ood: int, k: int = 2, seed: int = 0):
    """ID samples agree with one class's yes prompt and disagree with its no prompt; OOD the opposite."""
    rng = np.random.default_rng(seed)
    yes = rng.uniform(0.1, 0.2, (n_id + n_ood, k))
    no = rng.uniform(0.1, 0.2, (n_id + n_ood, k))
    cls = rng.integers(0, k, n_id)
    yes[np.arange(n_id), cls] += 0.15
    no[n_id:] += 0.15
    visual = rng.uniform(0.0, 0.3, (n_id + n_ood, k))
    visual[np.arange(n_id), cls] += 0.5
    return yes, no, visual


def _pool(yes, no, visual, probs):
    return PoolScores(np.arange(len(yes)), {"clip_cos_yes": yes, "clip_cos_no": no, "clip_cos_visual": visual, "probs": probs})


def _context(pool: PoolScores, params: dict) -> QueryContext:
    """A labeled sample of each known class: every class has a visual prototype (scores unused without tuning)."""
    return QueryContext(2, np.random.default_rng(0), params, LabeledScores(pool.subset(np.array([0, 1])), np.array([0, 1])))


def test_a_known_class_without_labeled_samples_is_decided_on_text_evidence():
    """No labeled sample of class 1: its prototype is zero. With visual weights over both classes its
    samples lost to the OOD score; they must be decided by the text towers alone."""
    rng = np.random.default_rng(4)
    n_id, n_ood, k = 60, 60, 2
    cls = np.repeat([0, 1], n_id // 2)
    yes = rng.uniform(0.1, 0.2, (n_id + n_ood, k))
    no = rng.uniform(0.1, 0.2, (n_id + n_ood, k))
    yes[np.arange(n_id), cls] += 0.15
    no[n_id:] += 0.15
    visual = rng.uniform(0.4, 0.6, (n_id + n_ood, k))  # CLIP images are all fairly similar to one another
    visual[np.arange(n_id), cls] += 0.3
    visual[:, 1] = 0.0  # the class mean of a class without labeled samples is the zero vector
    pool = _pool(yes, no, visual, np.full((n_id + n_ood, 2), 0.5))
    labeled = LabeledScores(pool.subset(np.array([0])), np.array([0]))  # class 0 only
    context = QueryContext(2, np.random.default_rng(0), {"tune_scale": False}, labeled)
    selection = get_strategy("vlpure").select(pool, 10, context)
    predicted = selection.diagnostics["predicted_known"]
    class_one = np.arange(n_id)[cls == 1]
    assert predicted[class_one].mean() > 0.9
    assert predicted[n_id:].mean() < 0.1
    assert predicted[np.arange(n_id)[cls == 0]].mean() > 0.9
    assert selection.values["classes_without_prototype"] == 1
    _, _, zero_prototype = vlpure_decision(yes, no, visual, 100.0)  # every class treated as having one
    assert zero_prototype[class_one].mean() < 0.5


def test_base_strategy_picks_among_the_predicted_id():
    yes, no, visual = _similarities(40, 60)
    probs = np.random.default_rng(1).dirichlet([1, 1], 100)
    probs[60:] = [0.5, 0.5]  # OOD samples are the most uncertain: least confidence alone would take them
    pool = _pool(yes, no, visual, probs)
    selection = get_strategy("vlpure").select(pool, 10, _context(pool, {"tune_scale": False, "scale": 100.0}))
    _, _, predicted = vlpure_decision(yes, no, visual, 100.0)
    assert predicted[:40].mean() > 0.9 and predicted[40:].mean() < 0.1
    assert predicted[selection.indices].all()
    ids = np.flatnonzero(predicted)
    expected = ids[np.argsort(-(1 - probs[ids].max(1)), kind="stable")[:10]]
    assert sorted(selection.indices.tolist()) == sorted(expected.tolist())
    assert selection.values["n_filled"] == 0 and selection.values["scale"] == 100.0


def test_fewer_predicted_id_than_budget_fills_by_margin():
    yes, no, visual = _similarities(4, 30)
    pool = _pool(yes, no, visual, np.full((34, 2), 0.5))
    selection = get_strategy("vlpure").select(pool, 8, _context(pool, {"tune_scale": False}))
    id_score, ood, predicted = vlpure_decision(yes, no, visual, 100.0)
    n_id = int(predicted.sum())
    assert len(selection.indices) == 8 and selection.values["n_filled"] == 8 - n_id
    assert predicted[selection.indices[:n_id]].all() and not predicted[selection.indices[n_id:]].any()
    margin = id_score - ood
    assert (np.diff(margin[selection.indices[n_id:]]) <= 1e-12).all()  # the rest: most ID-like first


def test_self_temperature_tuning_uses_labeled_id_and_ood_or_keeps_the_fixed_scale():
    yes, no, visual = _similarities(40, 60)
    pool = _pool(yes, no, visual, np.full((100, 2), 0.5))
    labeled_ids = np.array([0, 1, 2, 3, 60, 61, 62])
    labeled = LabeledScores(pool.subset(labeled_ids), np.array([0, 1, 0, 1, -1, -1, -1]))
    tuned = get_strategy("vlpure").select(pool, 5, QueryContext(2, np.random.default_rng(0), {"scale": 3.0}, labeled))
    assert tuned.values["tuning_balanced_accuracy"] == 1.0
    no_ood = LabeledScores(pool.subset(labeled_ids[:4]), np.array([0, 1, 0, 1]))
    kept = get_strategy("vlpure").select(pool, 5, QueryContext(2, np.random.default_rng(0), {"scale": 3.0}, no_ood))
    assert kept.values["scale"] == 3.0 and math.isnan(kept.values["tuning_balanced_accuracy"])


def test_ablations_change_what_is_needed():
    strategy = get_strategy("vlpure")
    assert "clip_cos_visual" not in strategy.required_columns({"visual_weights": False})
    assert strategy.required_columns({"base": "coreset"})[-1] == "embedding"
    assert strategy.network_options({"base": "ll"})["classifier"].head == "loss_prediction"
    with pytest.raises(InputError, match="base"):
        strategy.resolve_params({"base": "jsosal"})


@pytest.fixture(scope="module")
def tiny_clipn_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    name = register_model_config("tiny-vlpure", TINY)
    model = CLIPN(open_clip.create_model(name), model_name=name)
    path = tmp_path_factory.mktemp("clipn") / "clipn_tiny.pt"
    save_clipn_checkpoint(model, path)
    return str(path)


def test_missing_clip_weights_stop_the_job_before_ray(digits_config, tmp_path):
    from osal_ray.experiment import prepare_experiment

    config = digits_config(strategies=["vlpure"], clip={"model_config": TINY, "checkpoint": str(tmp_path / "absent.pt")})
    with pytest.raises(InputError) as info:
        prepare_experiment(config, log=lambda _: None)
    assert info.value.field == "clip.checkpoint" and "checkpoint" in info.value.message


@pytest.mark.ray
def test_vlpure_and_a_linear_probe_through_ray_on_digits(ray_session, digits_config, tiny_clipn_checkpoint, tmp_path):
    from osal_ray.experiment import prepare_experiment, run_experiment

    clip = {"model_name": "tiny-vlpure", "model_config": TINY, "checkpoint": tiny_clipn_checkpoint, "batch_size": 128}
    config = digits_config(
        tmp_path / "vlpure", strategies=["vlpure", "entropy"], clip=clip,
        **{"data.protocol": "ood_ratio", "data.ood_ratio": 0.4, "data.initial_size": 20, "model.classifier": "clip_linear"},
    )
    run_experiment(prepare_experiment(config, log=lambda _: None), log=lambda _: None)
    out = config.resolved_output_dir()
    rounds = pd.read_parquet(out / "rounds.parquet")
    vl = rounds[(rounds["strategy"] == "vlpure") & (rounds["round"] > 0)]
    for column in ("filter_accuracy", "auroc_id_margin", "scale", "tuning_balanced_accuracy", "n_predicted_id"):
        assert vl[column].notna().all(), column
    # F1 is undefined only when the filter predicts nothing as ID (random CLIP weights may do that).
    assert (vl["filter_f1"].notna() | (vl["n_predicted_id"] == 0)).all()
    assert vl["filter_accuracy"].between(0, 1).all() and (vl["scale"] > 0).all()
    assert rounds["accuracy"].between(0.3, 1.0).all()  # a linear probe on random CLIP features still learns something

    # The embeddings were computed once per job: one augmented pool, holding the column, reused by every round.
    augmented = [p for p in (out / "data").iterdir() if "-clip-" in p.name and not p.name.endswith(".staging")]
    assert len(augmented) == 1
    from osal_ray.data.pool import read_manifest

    manifest = read_manifest(augmented[0])
    assert manifest.vector_columns == {"clip_embedding": 32}
    stamp = max(p.stat().st_mtime_ns for p in augmented[0].rglob("*.parquet"))
    run_experiment(prepare_experiment(digits_config(tmp_path / "vlpure", strategies=["vlpure", "entropy"], clip=clip, **{
        "data.protocol": "ood_ratio", "data.ood_ratio": 0.4, "data.initial_size": 20, "model.classifier": "clip_linear",
        "al.rounds": 3}), log=lambda _: None), log=lambda _: None)
    assert max(p.stat().st_mtime_ns for p in augmented[0].rglob("*.parquet")) == stamp  # not recomputed on resume
    assert pd.read_parquet(out / "rounds.parquet")["round"].max() == 3


@pytest.mark.ray
def test_every_sample_is_embedded_once_per_job_across_seeds(ray_session, tiny_clipn_checkpoint, tmp_path):
    import pyarrow.parquet as pq

    from osal_ray.config import ClipConfig, DataConfig, ScoringConfig
    from osal_ray.data import build_split, load_dataset, materialize_pool
    from osal_ray.data.clip_store import clip_key, ensure_clip_embeddings
    from osal_ray.data.pool import pool_paths, read_table

    clip = ClipConfig(model_name="tiny-vlpure", model_config=TINY, checkpoint=tiny_clipn_checkpoint, batch_size=128)
    data = DataConfig(protocol="ood_ratio", ood_ratio=0.4, initial_size=20)
    source = load_dataset(data)
    augmented = {}
    for seed in (0, 1):  # OOD-ratio pools of two seeds share their known samples, not all of their unknowns
        split = build_split(data, source.train.labels, source.test.labels, source.class_names, seed)
        manifest = materialize_pool(source, split, tmp_path / "data" / f"seed_{seed}", 2)
        augmented[seed] = ensure_clip_embeddings(manifest, clip, ScoringConfig(), 2)
    store = tmp_path / "data" / f"clip-{clip_key(clip)}" / "pool"
    parts = sorted(p for p in store.iterdir())
    stored = read_table(sorted(str(p) for p in store.rglob("*.parquet")), ["clip_embedding"])
    ids = {seed: read_table(pool_paths(m), []).column("id").to_numpy() for seed, m in augmented.items()}
    assert len(parts) == 2 and stored.column("id").to_numpy().tolist() == sorted(set(ids[0]) | set(ids[1]))  # once each
    second = sum(pq.ParquetFile(p).metadata.num_rows for p in parts[1].glob("*.parquet"))
    assert second == len(set(ids[1]) - set(ids[0]))  # the second seed embedded only what the first lacked
    shared = np.intersect1d(ids[0], ids[1])
    a, b = (read_table(pool_paths(augmented[s]), ["clip_embedding"], shared).column("clip_embedding") for s in (0, 1))
    assert len(shared) > 0 and a.equals(b)
