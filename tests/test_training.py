"""Checkpoints (weights-only, refusals), the loss on a worked example, and training on Ray Train."""

from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from osal_ray.config import DataConfig, TrainConfig
from osal_ray.data import build_split, load_dataset, materialize_pool
from osal_ray.errors import InputError
from osal_ray.training import (
    NetworkSpec,
    TrainJob,
    fit_network,
    inverse_frequency_weights,
    load_network,
    save_network,
    temperature_cross_entropy,
)
from osal_ray.training.checkpoints import load_network_anywhere

SPEC = NetworkSpec("mlp", 3, 1, 8, {"hidden": 16})


def test_checkpoint_round_trip(tmp_path):
    model = SPEC.build()
    save_network(model, SPEC, tmp_path / "model.pt")
    loaded, spec = load_network(tmp_path)  # a directory means its model.pt
    assert spec == SPEC
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_of_another_shape_is_refused(tmp_path):
    save_network(SPEC.build(), SPEC, tmp_path / "model.pt")
    with pytest.raises(InputError, match="is configured"):
        load_network(tmp_path / "model.pt", expected=NetworkSpec("mlp", 4, 1, 8, {"hidden": 16}))
    # Same declared spec, but the tensors were tampered with: shapes no longer fit.
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    payload["state_dict"]["head.weight"] = torch.zeros(5, 16)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="wrong shape"):
        load_network(tmp_path / "bad.pt")


class NotATensor:
    def __reduce__(self):  # an object a weights-only load must refuse to build
        return (print, ("this must never run",))


def test_pickle_that_is_not_plain_tensors_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "osal_ray.network/1", "spec": {}, "state_dict": {}, "x": NotATensor()}, path)
    with pytest.raises(InputError, match="weights-only"):
        load_network(path)


def test_foreign_and_garbage_files_are_refused(tmp_path):
    torch.save(SPEC.build().state_dict(), tmp_path / "plain.pt")
    with pytest.raises(InputError, match="not an osal_ray network checkpoint"):
        load_network(tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2, 3])[:5])
    with pytest.raises(InputError, match="checkpoint"):
        load_network(tmp_path / "junk.pt")
    with pytest.raises(InputError, match="no checkpoint"):
        load_network(tmp_path / "absent.pt")


def test_inverse_frequency_weights_worked_example():
    # N = 6; n = (3, 1, 2, 0): w = (2, 6, 3, 0); an absent class gets 0.
    np.testing.assert_allclose(inverse_frequency_weights(np.array([0, 0, 0, 1, 2, 2]), 4), [2.0, 6.0, 3.0, 0.0])


def test_weighted_temperature_cross_entropy_worked_example():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 1])
    # logits / 0.5 = [[4, 0], [0, 2]]: CE_0 = log(1 + e^-4), CE_1 = log(1 + e^-2).
    ce0, ce1 = math.log1p(math.exp(-4)), math.log1p(math.exp(-2))
    loss = temperature_cross_entropy(logits, targets, 0.5, torch.tensor([1.0, 3.0]))
    assert float(loss) == pytest.approx((1 * ce0 + 3 * ce1) / 4, rel=1e-6)
    # JSOSAL's Eq. 1 averaged over the batch: the weights are not normalised away.
    mean = temperature_cross_entropy(logits, targets, 0.5, torch.tensor([1.0, 3.0]), reduction="mean")
    assert float(mean) == pytest.approx((1 * ce0 + 3 * ce1) / 2, rel=1e-6)
    assert float(temperature_cross_entropy(logits, targets, 1.0)) == pytest.approx((math.log1p(math.exp(-2)) + math.log1p(math.exp(-1))) / 2, rel=1e-6)


@pytest.fixture(scope="module")
def digits_pool(tmp_path_factory):
    config = DataConfig(known_classes=[3, 8], initial_fraction=0.2)
    source = load_dataset(config)
    split = build_split(config, source.train.labels, source.test.labels, source.class_names, seed=0)
    manifest = materialize_pool(source, split, tmp_path_factory.mktemp("pool") / "seed_0", 2)
    labels = source.train.labels[split.initial_ids]
    return manifest, split.initial_ids.tolist(), [0 if v == 3 else 1 for v in labels]


def _job(manifest, ids, labels, **train) -> TrainJob:
    base = dict(
        network="classifier", spec=NetworkSpec("mlp", 2, 1, 8), manifest=manifest, ids=ids, labels=labels, seed=1,
        train=TrainConfig(**{"epochs": 30, "batch_size": 16, **train}), evaluate=True,
    )
    return TrainJob(**base)


@pytest.mark.ray
def test_fit_in_process_learns_and_checkpoints(ray_session, digits_pool, tmp_path):
    manifest, ids, labels = digits_pool
    result = fit_network(_job(manifest, ids, labels, num_workers=0), tmp_path, "local-run")
    assert result.metrics["accuracy"] > 0.85
    assert result.metrics["train_samples"] == len(ids)
    model, spec = load_network(result.checkpoint_path)
    assert spec.num_outputs == 2
    again = fit_network(_job(manifest, ids, labels, num_workers=0), tmp_path, "local-run-2")
    assert again.metrics["accuracy"] == result.metrics["accuracy"]  # seeded: same model


@pytest.mark.ray
@pytest.mark.slow
def test_fit_on_a_ray_train_worker(ray_session, digits_pool, tmp_path):
    manifest, ids, labels = digits_pool
    job = _job(manifest, ids, labels, checkpoint_every=10, num_workers=1, cpus_per_worker=1)
    result = fit_network(job, tmp_path, "worker-run")
    assert result.metrics["accuracy"] > 0.85
    assert Path(result.checkpoint_path).is_relative_to(tmp_path)
    load_network(result.checkpoint_path)
    # The same name again resumes from the finished checkpoint: no epoch is trained twice.
    resumed = fit_network(job, tmp_path, "worker-run")
    assert resumed.metrics["accuracy"] == result.metrics["accuracy"]
    # On a storage URI the checkpoint path keeps its scheme (Ray's Checkpoint.path drops it).
    on_uri = fit_network(job, f"file://{tmp_path}/uri", "worker-uri")
    assert on_uri.checkpoint_path.startswith(f"file://{tmp_path}/uri/worker-uri/checkpoint_")
    load_network_anywhere(on_uri.checkpoint_path)


@pytest.mark.ray
def test_warm_start_begins_from_the_previous_round_and_refuses_another_architecture(ray_session, digits_pool, tmp_path):
    import dataclasses

    manifest, ids, labels = digits_pool
    first = fit_network(_job(manifest, ids, labels, num_workers=0), tmp_path, "round-0")
    # lr 0: the warm-started network must come out exactly as the previous round left it.
    job = _job(manifest, ids, labels, num_workers=0)
    warm = dataclasses.replace(job, train=dataclasses.replace(job.train, epochs=1, lr=0.0), init_checkpoint=first.checkpoint_path)
    second = fit_network(warm, tmp_path, "round-1")
    before, _ = load_network(first.checkpoint_path)
    after, _ = load_network(second.checkpoint_path)
    for name, tensor in before.state_dict().items():
        assert torch.equal(tensor, after.state_dict()[name]), name
    other = dataclasses.replace(warm, spec=NetworkSpec("mlp", 2, 1, 8, {"hidden": 16}))
    with pytest.raises(InputError) as info:
        fit_network(other, tmp_path, "round-1-other")
    assert info.value.field == "train.reinit (warm start)"


@pytest.mark.parametrize("world", [1, 3])
def test_epoch_batches_fold_the_remainder_and_cover_every_sample(world):
    from osal_ray.training.batches import epoch_batches

    for n in range(1, 300):
        per_rank = [epoch_batches(n, 64, torch.Generator().manual_seed(n), rank, world) for rank in range(world)]
        assert len({len(batches) for batches in per_rank}) == 1  # every worker runs the same number of steps
        indices = torch.cat([b for batches in per_rank for b in batches]).tolist()
        assert set(indices) == set(range(n))
        for batches in per_rank:
            sizes = [len(b) for b in batches]
            if len(sizes) > 1:
                assert min(sizes) >= 32 and max(sizes) <= 96, (n, sizes)  # never a 1-5 sample batch
    assert [len(b) for b in epoch_batches(65, 64, torch.Generator().manual_seed(0))] == [65]
    assert [len(b) for b in epoch_batches(129, 64, torch.Generator().manual_seed(0))] == [65, 64]


def test_batchnorm_network_trained_on_65_samples_does_not_collapse(digits_pool, tmp_path):
    """65 labeled with batch 64 used to end every epoch on a 1-sample batch: accuracy fell to ~0.5 on 2 classes."""
    from osal_ray.training.worker import InProcessSession, train_loop_per_worker

    from osal_ray.data.pool import pool_paths, read_labels

    manifest, _, _ = digits_pool
    pool_ids, pool_labels = read_labels(pool_paths(manifest))
    known = np.isin(pool_labels, [3, 8])
    ids, labels = pool_ids[known][:65].tolist(), (pool_labels[known][:65] == 8).astype(int).tolist()
    for seed in (0, 1):
        job = dataclasses.replace(
            _job(manifest, ids, labels), spec=NetworkSpec("cnn", 2, 1, 8, {"width": 8, "embedding": 16}), seed=seed,
            train=TrainConfig(epochs=20, batch_size=64), local_checkpoint_dir=str(tmp_path / f"ckpt{seed}"),
        )
        session = InProcessSession()
        train_loop_per_worker(job.to_config(), session=session)
        assert session.metrics["accuracy"] > 0.9


def test_batchnorm_statistics_stay_sane_when_the_set_is_smaller_than_a_batch(digits_pool, tmp_path):
    from osal_ray.training.worker import InProcessSession, train_loop_per_worker

    manifest, ids, labels = digits_pool
    picks = [labels.index(0), labels.index(1), len(labels) - 1 - labels[::-1].index(0)]
    few_ids, few_labels = [ids[i] for i in picks], [labels[i] for i in picks]
    job = dataclasses.replace(
        _job(manifest, few_ids, few_labels), spec=NetworkSpec("cnn", 2, 1, 8, {"width": 8, "embedding": 16}),
        train=TrainConfig(epochs=30, batch_size=64), local_checkpoint_dir=str(tmp_path / "ckpt"),
    )
    session = InProcessSession()
    train_loop_per_worker(job.to_config(), session=session)
    model, _ = load_network(Path(session.folder))
    for name, tensor in model.state_dict().items():
        if "running_var" in name:
            assert torch.isfinite(tensor).all() and (tensor > 0).all(), name
        if "running_mean" in name:
            assert torch.isfinite(tensor).all(), name
    # In eval mode (running statistics) the network still fits its three training samples.
    assert session.metrics["accuracy"] > 0.6


def _train_worker_pids() -> set[int]:
    import psutil

    pids = set()
    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        title = " ".join([process.info["name"] or ""] + (process.info["cmdline"] or []))
        if "RayTrainWorker" in title:
            pids.add(process.info["pid"])
    return pids


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_training_worker_is_restarted_from_its_last_checkpoint(ray_session, digits_pool, tmp_path):
    """train.max_failures: the worker dies (SIGKILL, as on a lost node) after its first checkpoint; Ray Train
    starts a new worker that resumes from that checkpoint and the round's network still comes out."""
    import os
    import signal
    import threading
    import time

    manifest, ids, labels = digits_pool
    job = _job(manifest, ids, labels, epochs=240, checkpoint_every=10, num_workers=1, cpus_per_worker=1, max_failures=1)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=_fit_or_error(job, tmp_path, "killed-run")))
    thread.start()
    deadline, killed = time.time() + 180, None
    while killed is None and time.time() < deadline and thread.is_alive():
        pids = _train_worker_pids()
        if pids and list((tmp_path / "killed-run").glob("checkpoint_*")):
            killed = pids.pop()
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    thread.join(timeout=300)
    assert killed is not None, "the worker finished before it could be killed"
    result = outcome["result"]
    assert not isinstance(result, Exception), result
    assert result.metrics["accuracy"] > 0.85 and killed not in _train_worker_pids()


def _fit_or_error(job, storage_path, name):
    try:
        return fit_network(job, storage_path, name)
    except Exception as error:  # noqa: BLE001 - handed to the test thread
        return error


@pytest.mark.ray
def test_in_tune_trial_is_told_apart_by_rays_public_context(ray_session, tmp_path):
    """The one place that asks Ray whether code runs in a Tune trial (local Train mode is refused there):
    an upgrade that changes the answer fails here, not as a sweep that trains nothing."""
    from ray import tune

    from osal_ray.training.fit import _in_tune_trial

    assert _in_tune_trial() is False

    def trial(_config):
        tune.report({"inside": float(_in_tune_trial())})

    tuner = tune.Tuner(trial, run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
                       tune_config=tune.TuneConfig(num_samples=1))
    (result,) = list(tuner.fit())
    assert result.error is None and result.metrics["inside"] == 1.0
