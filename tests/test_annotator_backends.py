"""The annotator registry (``oracle.kind``): one contract test over every backend, and the front door."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import config_with
from osal_ray.annotation import ANNOTATORS, AnnotatorSetup, annotator_backend, oracle_kinds
from osal_ray.annotation.contract import Annotator
from osal_ray.data import build_split, load_dataset, materialize_pool
from osal_ray.data.pool import read_pool_ids
from osal_ray.errors import InputError
from osal_ray.validation import validate_config

# Every backend's config keys for a digits job (the test sets what each one needs).
BACKEND_SETTINGS = {
    "simulated": {},
    "files": {},
    "label_studio": {"label_studio.url": "http://127.0.0.1:8080"},
}


def _config(kind: str, out):
    raw = {"name": "backends", "seeds": [0, 1], "strategies": ["random"], "output_dir": str(out),
           "data": {"dataset": "digits", "known_classes": [3, 8]}, "oracle": {"kind": kind}}
    return config_with(raw, BACKEND_SETTINGS[kind])


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    config = _config("simulated", tmp_path_factory.mktemp("out"))
    source = load_dataset(config.data)
    root = tmp_path_factory.mktemp("pools")
    return [materialize_pool(source, build_split(config.data, source.train.labels, source.test.labels, source.class_names, seed),
                             root / f"seed_{seed}", 1) for seed in config.seeds]


def test_every_backend_has_settings():
    assert set(ANNOTATORS.names()) == set(BACKEND_SETTINGS)
    assert oracle_kinds() == ["auto", *ANNOTATORS.names()]


@pytest.mark.parametrize("kind", ANNOTATORS.names())
def test_backend_contract(kind, manifests, tmp_path, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "a-token")
    config = _config(kind, tmp_path / "out")
    backend = ANNOTATORS.get(kind)
    assert backend.name == kind and annotator_backend(config) is backend
    validate_config(config)  # its settings pass its own checks
    annotators = backend.create(AnnotatorSetup(config, tmp_path / "out", manifests, log=lambda _: None))
    assert len(annotators) == len(manifests) and all(isinstance(a, Annotator) for a in annotators)
    ids = read_pool_ids(manifests[0])[:3]
    assert len(ids) == 3
    if backend.human:
        assert len({id(a) for a in annotators}) == 1, "people label every seed through one annotator"
        annotator = annotators[0]
        assert annotator.shows_predictions and not annotator.has_truth and annotator.num_known is None
        assert annotator.answers(1, ids) is None  # nothing published, nothing answered
        assert annotator.corrections() == []
        annotator.close(1)  # a round that was never published: nothing to mark
        assert backend.where(tmp_path / "out", config, {"contact_sheet": "S", "labels_template": "T"})
    else:
        for annotator, manifest in zip(annotators, manifests):
            assert annotator.has_truth and annotator.num_known and not annotator.shows_predictions
            pool = read_pool_ids(manifest)[:5]
            assert np.array_equal(annotator.answers(1, pool), annotator.known_index(pool))
    junk = backend.take_event(tmp_path / "out", config, {"action": "PROJECT_CREATED"}, print)
    assert (junk == 0) if backend.takes_events else (junk is None)  # an event that names no task stages nothing


def test_auto_is_files_for_an_image_pool_and_simulated_otherwise(tmp_path):
    digits = config_with({"data": {"dataset": "digits"}}, {})
    pool = config_with({"data": {"dataset": "image_pool", "root": str(tmp_path)}}, {})
    assert annotator_backend(digits).name == "simulated" and annotator_backend(pool).name == "files"
    assert not annotator_backend(digits).human and annotator_backend(pool).human


def test_an_unknown_kind_names_every_backend():
    config = config_with({"oracle": {"kind": "cvat"}}, {})
    with pytest.raises(InputError) as raised:
        validate_config(config)
    assert raised.value.field == "oracle.kind" and all(name in raised.value.message for name in ANNOTATORS.names())
