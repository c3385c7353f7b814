"""Frozen features (``features.extractor``): every extractor on small real-format data, the store's keys and
reuse, the refusals, and every strategy on a head."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from osal_ray.data import build_split, load_dataset, materialize_pool
from osal_ray.data.pool import decode_vectors, pool_paths, read_table
from osal_ray.errors import InputError
from osal_ray.experiment import prepare_experiment, run_experiment
from osal_ray.features import EXTRACTORS, ensure_features
from osal_ray.features.pixels import fit_pca
from osal_ray.strategies import STRATEGIES
from osal_ray.validation import validate_config

QUIET = dict(log=lambda _: None)
PIXELS = {"features.extractor": "pixels", "features.params": {"components": 16}, "model.classifier": "linear"}
# A simclr recipe that trains in seconds on digits (8x8).
TINY_SIMCLR = {"model_kwargs": {"width": 8, "embedding": 24}, "projection_dim": 16, "epochs": 2, "batch_size": 128}
SIMCLR = {"features.extractor": "simclr", "features.params": TINY_SIMCLR, "model.classifier": "linear"}
# Strategies that need more than a head on features: VLPure reads CLIP's text towers (its own test). MQNet's
# purity reads the frozen features there (no SimCLR encoder per run).
NOT_ON_HEADS = {"vlpure"}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A CLIPN checkpoint in the real format, with random weights (no weights can be fetched here)."""
    import open_clip
    from test_vlpure import TINY

    from osal_ray.clip.loading import register_model_config, save_clipn_checkpoint
    from osal_ray.clip.model import CLIPN

    name = register_model_config("tiny-features", TINY)
    path = tmp_path_factory.mktemp("clipn") / "clipn_tiny.pt"
    save_clipn_checkpoint(CLIPN(open_clip.create_model(name), model_name=name), path)
    return {"model_name": name, "model_config": TINY, "checkpoint": str(path), "batch_size": 128}


def _pool(config, tmp_path, seed: int = 0):
    source = load_dataset(config.data)
    split = build_split(config.data, source.train.labels, source.test.labels, source.class_names, seed)
    return materialize_pool(source, split, tmp_path / "data" / f"seed_{seed}", 2)


def _features(manifest) -> tuple[np.ndarray, np.ndarray]:
    table = read_table(pool_paths(manifest), ["features"])
    return table.column("id").to_numpy(), decode_vectors(table.column("features"), manifest.vector_columns["features"])


def test_every_extractor_is_tested():
    assert set(EXTRACTORS.names()) == {"pixels", "clip", "simclr"}


@pytest.mark.ray
@pytest.mark.parametrize("name", EXTRACTORS.names())
def test_extractor_on_digits(name, ray_session, digits_config, tiny_clip, tmp_path):
    settings = {"features.extractor": name, "model.classifier": "linear"}
    if name == "clip":
        settings["clip"] = tiny_clip
    if name == "simclr":
        settings["features.params"] = TINY_SIMCLR
    config = digits_config(tmp_path / "out", **settings)
    validate_config(config)
    manifest = _pool(config, tmp_path)
    featured = ensure_features(manifest, config)
    ids, vectors = _features(featured)
    assert len(ids) == manifest.num_pool and np.isfinite(vectors).all()
    assert vectors.shape[1] == {"pixels": 64, "clip": TINY_DIM, "simclr": 24}[name]
    test = read_table([f"{featured.directory}/{featured.test_file}"], ["features"])
    assert test.num_rows == manifest.num_test
    assert ensure_features(manifest, config).directory == featured.directory  # stored once, found again


TINY_DIM = 32  # the tiny CLIP's embedding size


@pytest.mark.ray
def test_pixel_features_are_the_pca_of_the_pool_and_shared_by_seeds(ray_session, digits_config, tmp_path):
    config = digits_config(tmp_path / "out", **PIXELS)
    manifest = _pool(config, tmp_path)
    ids, vectors = _features(ensure_features(manifest, config))
    images = read_table(pool_paths(manifest), ["image"])
    from osal_ray.data.pool import decode_images
    from osal_ray.features.pixels import flat_pixels

    x = flat_pixels(decode_images(images.column("image"), manifest), manifest.pixel_max)
    expected = (x - x.mean(0)) @ fit_pca(x, 16, True)["axes"].T / fit_pca(x, 16, True)["scale"]
    assert np.allclose(np.abs(vectors), np.abs(expected), atol=1e-3)  # every pool image fits the PCA (digits is small)
    assert np.allclose(vectors.std(0), 1.0, atol=0.05)  # whitened
    # Another seed's pool of the same images (digits' mismatch pools differ only in their initial set): the
    # same store, fitted once, and the same vectors.
    other = ensure_features(_pool(config, tmp_path, seed=1), config)
    assert other.directory != featured_directory(manifest, config)
    stores = [p for p in (tmp_path / "data").iterdir() if p.name.startswith("features-")]
    other_ids, other_vectors = _features(other)
    assert len(stores) == 1 and np.array_equal(ids, other_ids) and np.array_equal(vectors, other_vectors)


def featured_directory(manifest, config) -> str:
    return ensure_features(manifest, config).directory


def test_fit_pca_matches_scikit_learn():
    from sklearn.decomposition import PCA

    x = np.random.default_rng(0).normal(size=(300, 20)).astype(np.float32) * np.arange(1, 21, dtype=np.float32)
    mine = fit_pca(x, 5, True)
    theirs = PCA(5, whiten=True, svd_solver="full").fit(x)
    assert np.allclose(np.abs(mine["axes"]), np.abs(theirs.components_), atol=1e-4)
    assert np.allclose((x - mine["mean"]) @ mine["axes"].T / mine["scale"], theirs.transform(x) * np.sign(
        (mine["axes"] * theirs.components_).sum(1)), atol=1e-3)


@pytest.mark.parametrize("settings, field", [
    ({"model.classifier": "linear"}, "model.classifier"),  # a head without features
    ({"features.extractor": "pixels"}, "model.classifier"),  # features, but a network on images
    ({"features.extractor": "pixels", "model.classifier": "linear", "model.detector": "cnn"}, "model.detector"),
    ({"features.extractor": "dinov9", "model.classifier": "linear"}, "features.extractor"),
    ({"features.extractor": "pixels", "model.classifier": "linear", "features.params": {"components": 0}},
     "features.params.components"),
    ({"features.extractor": "pixels", "model.classifier": "linear", "features.params": {"colour": True}},
     "features.params.colour"),
    ({"features.batch_size": 0}, "features.batch_size"),
    ({**PIXELS, "model.kwargs": {"width": 16}}, "model.kwargs"),  # a CNN's argument, refused before Ray
    ({"model.kwargs": {"depth": 3}}, "model.kwargs"),
])
def test_a_features_setting_that_cannot_work_is_refused(settings, field, digits_config, tmp_path):
    with pytest.raises(InputError) as raised:
        validate_config(digits_config(tmp_path / "out", **settings))
    assert raised.value.field == field


def test_mqnet_purity_reads_the_features_on_features_and_its_encoder_otherwise(digits_config, tmp_path):
    from osal_ray.experiment.plan import plan_strategy

    on_features = plan_strategy(digits_config(tmp_path / "out", strategies=["mqnet"], **PIXELS), "mqnet")
    assert on_features.params.purity_source == "features" and "features_embedding" in on_features.columns
    assert [n.name for n in on_features.networks] == ["classifier"] and on_features.stored_columns == {"features"}
    on_images = plan_strategy(digits_config(tmp_path / "out", strategies=["mqnet"]), "mqnet")
    assert on_images.params.purity_source == "ssl" and [n.name for n in on_images.networks] == ["classifier", "ssl"]
    from osal_ray.strategies.mqnet import MQNetParams

    assert MQNetParams.legacy()["purity_source"] == "ssl"  # a run saved before the key trained its encoder


@pytest.mark.parametrize("settings, field, words", [
    ({**PIXELS, "strategy_params": {"mqnet": {"purity_source": "ssl"}}}, "model.classifier", "simclr"),  # images needed
    ({"strategy_params": {"mqnet": {"purity_source": "features"}}}, "strategy_params.mqnet", "features.extractor"),
    ({"strategy_params": {"mqnet": {"purity_source": "clip"}}}, "strategy_params.mqnet.purity_source", "ssl or features"),
])
def test_an_mqnet_purity_that_cannot_work_is_refused(settings, field, words, digits_config, tmp_path):
    with pytest.raises(InputError, match=words) as raised:
        prepare_experiment(digits_config(tmp_path / "out", strategies=["mqnet"], **settings), **QUIET)
    assert raised.value.field == field


@pytest.mark.ray
def test_a_resumed_run_refuses_other_features(ray_session, digits_config, tmp_path):
    out = tmp_path / "run"
    run_experiment(prepare_experiment(digits_config(out, **{**PIXELS, "al.rounds": 1}), **QUIET), **QUIET)
    for changed in ({"features.params": {"components": 8}}, {"features.extractor": None, "model.classifier": "mlp"}):
        with pytest.raises(InputError) as raised:
            prepare_experiment(digits_config(out, **{**PIXELS, "al.rounds": 2, **changed}), **QUIET)
        assert "features" in raised.value.message or "model" in raised.value.message


@pytest.mark.ray
@pytest.mark.parametrize("strategy", sorted(set(STRATEGIES.names()) - NOT_ON_HEADS))
def test_every_strategy_runs_on_a_head(strategy, ray_session, digits_config, tmp_path):
    config = digits_config(tmp_path / "out", strategies=[strategy], **{**PIXELS, "al.rounds": 1, "train.epochs": 5})
    run_experiment(prepare_experiment(config, **QUIET), **QUIET)
    rounds = pd.read_parquet(config.resolved_output_dir() / "rounds.parquet")
    assert rounds["round"].tolist() == [0, 1] and rounds["accuracy"].between(0.3, 1.0).all()
    queries = pd.read_parquet(config.resolved_output_dir() / "queries.parquet")
    assert len(queries) == config.al.budget and queries["id"].is_unique


@pytest.mark.ray
def test_an_image_pool_labeled_by_people_runs_on_features(ray_session, tmp_path):
    """The augmented pool keeps an image pool's side arrays (its labeled examples' labels, absent ids)."""
    from conftest import config_with
    from osal_ray.examples.image_pool import write_example

    root = tmp_path / "pool"
    write_example(root, pool_size=150, labeled_per_class=4, test_per_class=10, source="digits")
    config = config_with({"name": "pool-features", "strategies": ["random", "osal"], "output_dir": str(tmp_path / "out"),
                          "data": {"dataset": "image_pool", "root": str(root), "image_size": 8},
                          "al": {"rounds": 2, "budget": 10}, "train": {"epochs": 5}}, PIXELS)
    run_experiment(prepare_experiment(config, **QUIET), **QUIET)
    status = pd.read_json(tmp_path / "out" / "status.json", typ="series")
    assert status["state"] == "waiting_for_labels" and status["round"] == 1
    rounds = pd.read_parquet(tmp_path / "out" / "rounds.parquet")
    assert (rounds[rounds["round"] == 0]["n_labeled_known"] > 0).all()  # trained on the labeled/ examples
