"""The ``simclr`` feature extractor on digits: one encoder per recipe and pool, reused by seeds and reruns,
its recipe in the store key and compared on resume, and a stored encoder that cannot be loaded refused."""

from __future__ import annotations

import numpy as np
import pytest

from osal_ray.errors import InputError
from osal_ray.experiment import prepare_experiment, run_experiment
from osal_ray.features import ensure_features, features_identity
from osal_ray.features.simclr import ENCODER_FILE
from osal_ray.features.store import features_key
from osal_ray.validation import validate_config
from test_features import QUIET, SIMCLR, TINY_SIMCLR, _features, _pool


def _stores(tmp_path):
    return sorted(p for p in (tmp_path / "data").iterdir() if p.name.startswith("features-"))


@pytest.mark.ray
def test_the_encoder_is_trained_once_and_shared_by_seeds(ray_session, digits_config, tmp_path, monkeypatch):
    config = digits_config(tmp_path / "out", **SIMCLR)
    ids, vectors = _features(ensure_features(_pool(config, tmp_path), config))
    [store] = _stores(tmp_path)
    assert (store / ENCODER_FILE).is_file() and np.isfinite(vectors).all() and vectors.std(0).max() > 0

    import osal_ray.training.fit as fit

    monkeypatch.setattr(fit, "fit_network", lambda *a, **k: pytest.fail("the stored encoder was trained again"))
    other = ensure_features(_pool(config, tmp_path, seed=1), config)  # another seed's pool of the same images
    other_ids, other_vectors = _features(other)
    assert _stores(tmp_path) == [store] and np.array_equal(ids, other_ids) and np.array_equal(vectors, other_vectors)


def test_the_store_key_holds_the_recipe_and_the_pool(digits_config, tmp_path):
    config = digits_config(tmp_path / "out", **SIMCLR)
    manifest = _pool(config, tmp_path)
    key = features_key(features_identity(config, manifest))
    assert key == features_key(features_identity(digits_config(tmp_path / "out", **SIMCLR), manifest))
    for changed in ({"epochs": 3}, {"seed": 1}, {"temperature": 0.2}, {"model_kwargs": {"width": 8, "embedding": 32}}):
        other = digits_config(tmp_path / "out", **{**SIMCLR, "features.params": {**TINY_SIMCLR, **changed}})
        assert features_key(features_identity(other, manifest)) != key, changed
    fewer = digits_config(tmp_path / "out", **{**SIMCLR, "data.train_fraction": 0.5})
    assert features_key(features_identity(fewer, _pool(fewer, tmp_path / "fewer"))) != key  # trained on other images


@pytest.mark.parametrize("params, field", [
    ({"epochs": 0}, "features.params.epochs"),
    ({"batch_size": 1}, "features.params.batch_size"),
    ({"temperature": 0}, "features.params.temperature"),
    ({"lr_decay_at": 1.5}, "features.params.lr_decay_at"),
    ({"model": "linear"}, "features.params.model"),  # a head on features cannot be the encoder
    ({"model": "vit"}, "features.params.model"),
    ({"model_kwargs": {"depth": 3}}, "features.params.model_kwargs"),
    ({"seed": -1}, "features.params.seed"),
    ({"views": 3}, "features.params.views"),
])
def test_an_impossible_recipe_is_refused_naming_its_key(params, field, digits_config, tmp_path):
    with pytest.raises(InputError) as raised:
        validate_config(digits_config(tmp_path / "out", **{**SIMCLR, "features.params": params}))
    assert raised.value.field == field


@pytest.mark.ray
def test_a_resumed_run_refuses_another_recipe(ray_session, digits_config, tmp_path):
    out = tmp_path / "run"
    run_experiment(prepare_experiment(digits_config(out, **{**SIMCLR, "al.rounds": 1, "train.epochs": 3}), **QUIET), **QUIET)
    changed = {**SIMCLR, "features.params": {**TINY_SIMCLR, "epochs": 3}, "al.rounds": 2, "train.epochs": 3}
    with pytest.raises(InputError, match="features"):
        prepare_experiment(digits_config(out, **changed), **QUIET)


@pytest.mark.ray
def test_a_corrupt_stored_encoder_is_refused_naming_the_file(ray_session, digits_config, tmp_path):
    config = digits_config(tmp_path / "out", **SIMCLR)
    ensure_features(_pool(config, tmp_path), config)
    [store] = _stores(tmp_path)
    encoder = store / ENCODER_FILE
    encoder.write_bytes(encoder.read_bytes()[:1000])  # truncated
    with pytest.raises(InputError, match=str(encoder)) as raised:
        ensure_features(_pool(config, tmp_path, seed=1), config)
    assert raised.value.field == "features.params" and "delete" in raised.value.message
