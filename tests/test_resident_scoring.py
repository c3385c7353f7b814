"""Resident scorers (issue 14 §2): shards that cover the pool, the mode ``auto`` picks, the same
scores as the streaming pass, actors that stay alive across rounds and take each round's weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from osal_ray.config import ScoringConfig, TrainConfig, config_from_dict
from osal_ray.errors import InputError
from osal_ray.experiment import prepare_experiment, run_experiment
from osal_ray.experiment.concurrent import concurrency_limit, trajectory_footprint
from osal_ray.scoring.resident import plan_shards, read_segments, use_resident
from osal_ray.validation import validate_config

GIB = 2**30


def _files(tmp_path, sizes, row_group_size=3):
    paths, start = [], 0
    for index, size in enumerate(sizes):
        path = tmp_path / f"pool-{index}.parquet"
        ids = np.arange(start, start + size, dtype=np.int64)
        pq.write_table(pa.table({"id": ids, "label": ids % 7}), path, row_group_size=row_group_size)
        paths.append(str(path))
        start += size
    return paths


@pytest.mark.parametrize("sizes, actors", [([10, 7, 5], 3), ([4], 3), ([2, 2], 5), ([9, 9], 1)])
def test_shards_are_contiguous_near_equal_and_cover_every_row_once(tmp_path, sizes, actors):
    paths = _files(tmp_path, sizes)
    shards = plan_shards(paths, actors)
    assert len(shards) == actors
    read = [read_segments(s, ["id"]).column("id").to_numpy() if s else np.zeros(0, np.int64) for s in shards]
    np.testing.assert_array_equal(np.concatenate(read), np.arange(sum(sizes)))
    lengths = [len(r) for r in read]
    assert max(lengths) - min(lengths) <= 1


def test_a_segment_reads_only_its_rows_across_row_groups(tmp_path):
    paths = _files(tmp_path, [20], row_group_size=4)
    table = read_segments([(paths[0], 5, 14)], ["id", "label"])
    np.testing.assert_array_equal(table.column("id").to_numpy(), np.arange(5, 14))
    np.testing.assert_array_equal(table.column("label").to_numpy(), np.arange(5, 14) % 7)


CLUSTER = {"CPU": 2.0, "memory": 16 * GIB}


@pytest.mark.parametrize("scoring, train, cluster, pool, resident, reason", [
    (ScoringConfig(), TrainConfig(), CLUSTER, 10 << 20, True, "resident"),
    (ScoringConfig(mode="streaming"), TrainConfig(), CLUSTER, 10 << 20, False, "scoring.mode is streaming"),
    (ScoringConfig(mode="resident"), TrainConfig(), CLUSTER, 100 * GIB, True, "scoring.mode is resident"),
    (ScoringConfig(), TrainConfig(), CLUSTER, 5 * GIB, False, "exceed 25%"),
    (ScoringConfig(num_actors=2, cpus_per_actor=1.0), TrainConfig(num_workers=1), CLUSTER, 1 << 20, False, "CPU 3 of 2"),
    (ScoringConfig(gpus_per_actor=1.0), TrainConfig(num_workers=1, use_gpu=True), {**CLUSTER, "GPU": 1.0}, 1 << 20, False, "GPU 2 of 1"),
    (ScoringConfig(gpus_per_actor=0.5), TrainConfig(num_workers=1, use_gpu=True), {**CLUSTER, "GPU": 2.0}, 1 << 20, True, "resident"),
    (ScoringConfig(resources_per_actor={"scorer": 1}), TrainConfig(), CLUSTER, 1 << 20, False, "scorer 1 of 0"),
])
def test_auto_holds_the_pool_only_where_scorers_and_training_fit_side_by_side(scoring, train, cluster, pool, resident, reason):
    decision = use_resident(scoring, train, pool, cluster)
    assert decision.resident is resident and reason in decision.reason


def test_concurrent_trajectories_each_need_their_scorers_and_training():
    scoring, train = ScoringConfig(num_actors=2, cpus_per_actor=0.5), TrainConfig(num_workers=1)
    assert use_resident(scoring, train, 1 << 20, {"CPU": 4.0}, concurrent=2).resident
    assert not use_resident(scoring, train, 1 << 20, {"CPU": 4.0}, concurrent=3).resident


def test_resident_footprint_holds_scorers_and_training_and_needs_no_spare_cpu():
    config = config_from_dict({"train": {"num_workers": 1, "cpus_per_worker": 1.0}, "scoring": {"num_actors": 2}})
    assert trajectory_footprint(config) == pytest.approx(1.1)  # streaming: one after the other
    assert trajectory_footprint(config, resident=True) == pytest.approx(2.1)  # resident: side by side
    assert concurrency_limit(config, 12, cluster_cpus=4) == 2
    assert concurrency_limit(config, 12, cluster_cpus=4, resident=True) == 1
    plain = config_from_dict({})
    assert concurrency_limit(plain, 12, cluster_cpus=2) == 1  # streaming keeps a CPU for the repartition task
    assert concurrency_limit(plain, 12, cluster_cpus=2, resident=True) == 2  # 0.6 reserved each; one torch thread each
    assert concurrency_limit(plain, 12, cluster_cpus=4, resident=True, torch_threads=1) == 4  # 0.6 x 6 would fit; 4 threads


def test_scoring_mode_is_validated():
    with pytest.raises(InputError, match="scoring.mode"):
        validate_config(config_from_dict({"scoring": {"mode": "always"}}))


def _pool_and_checkpoints(tmp_path):
    from osal_ray.config import DataConfig
    from osal_ray.data import build_split, load_dataset, materialize_pool
    from osal_ray.training import NetworkSpec, save_network

    config = DataConfig(dataset="digits", known_classes=[3, 8], initial_fraction=0.05)
    source = load_dataset(config)
    split = build_split(config, source.train.labels, source.test.labels, source.class_names, seed=0)
    manifest = materialize_pool(source, split, tmp_path / "pool", num_files=3)
    rounds = []
    for index in range(2):
        torch.manual_seed(index)
        paths = {}
        for name, outputs in (("classifier", 2), ("detector", 3)):
            spec = NetworkSpec("cnn", outputs, 1, 8, {"width": 8, "embedding": 16})
            folder = tmp_path / f"round{index}" / name
            folder.mkdir(parents=True)
            save_network(spec.build(), spec, folder / "model.pt")
            paths[name] = str(folder)
        rounds.append(paths)
    return manifest, rounds


COLUMNS = ["entropy", "det_pred", "det_mav", "det_known_margin", "embedding"]


def test_resident_scorers_match_the_streaming_pass_and_stay_alive_across_rounds(ray_session, tmp_path):
    import ray

    from osal_ray.scoring import score_pool
    from osal_ray.scoring.resident import _RESIDENT, release_resident_scorers

    manifest, rounds = _pool_and_checkpoints(tmp_path)
    scoring = ScoringConfig(num_actors=2, batch_size=64)
    inputs = {"classifier": "image", "detector": "image"}

    def actor_ids():
        return sorted(actor._actor_id.hex() for scorers in _RESIDENT.values() for actor in scorers.actors)

    try:
        resident = [score_pool(manifest, checkpoints, COLUMNS, scoring, inputs, resident=True) for checkpoints in rounds]
        actors = [actor for scorers in _RESIDENT.values() for actor in scorers.actors]
        assert len(actors) == 2 and sum(ray.get([a.num_rows.remote() for a in actors])) == manifest.num_pool
        first = actor_ids()
        again = score_pool(manifest, rounds[0], COLUMNS, scoring, inputs, resident=True)
        assert actor_ids() == first  # the same two actors served every round
    finally:
        release_resident_scorers()
    assert _dies_within(actors[0], seconds=30)  # released (ray.kill takes effect asynchronously)
    streaming = [score_pool(manifest, checkpoints, COLUMNS, scoring, inputs) for checkpoints in rounds]
    for ours, theirs in zip(resident, streaming):
        np.testing.assert_array_equal(ours.ids, theirs.ids)
        np.testing.assert_array_equal(ours.ids, np.sort(ours.ids))
        assert len(ours.ids) == manifest.num_pool
        for name in COLUMNS:
            np.testing.assert_allclose(ours.columns[name], theirs.columns[name], rtol=1e-5, atol=1e-5)
    # each round's new weights were loaded, and loading the first round's again gives its scores again
    assert not np.allclose(resident[0].columns["det_mav"], resident[1].columns["det_mav"])
    np.testing.assert_array_equal(again.columns["det_mav"], resident[0].columns["det_mav"])


def _dies_within(actor, seconds: float) -> bool:
    import time

    import ray

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ray.get(actor.num_rows.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return True
        except ray.exceptions.GetTimeoutError:
            pass
        time.sleep(0.2)
    return False


def test_a_run_gives_the_same_queries_with_resident_streaming_and_inline_scoring(ray_session, digits_config, tmp_path):
    # One batch covers the pool in every mode, so even float32 rounding is the same.
    outputs = {}
    for mode in ("resident", "streaming", "inline"):
        config = digits_config(tmp_path / mode, strategies=["jsosal", "entropy"],
                               **{"scoring.mode": mode, "scoring.batch_size": 4096, "execution.max_concurrent_trajectories": 1})
        lines: list[str] = []
        run_experiment(prepare_experiment(config, log=lines.append), log=lines.append)
        assert f"scoring: scoring.mode is {mode}" in lines
        outputs[mode] = pd.read_parquet(tmp_path / mode / "queries.parquet")
    pd.testing.assert_frame_equal(outputs["resident"], outputs["streaming"])
    pd.testing.assert_frame_equal(outputs["resident"], outputs["inline"])


def test_inline_scoring_on_features_gives_the_same_queries_concurrently(ray_session, digits_config, tmp_path):
    """Heads on frozen features scored in the trajectories' own processes: two at once as one after the other."""
    outputs = {}
    for limit in (1, 2):
        config = digits_config(tmp_path / str(limit), strategies=["badge", "lfosa"], seeds=[0, 1],
                               **{"scoring.mode": "inline", "features.extractor": "pixels", "features.params": {"components": 16},
                                  "model.classifier": "linear", "execution.torch_threads": 1,
                                  "execution.max_concurrent_trajectories": limit, "al.rounds": 2})
        run_experiment(prepare_experiment(config, log=lambda _: None), log=lambda _: None)
        outputs[limit] = pd.read_parquet(tmp_path / str(limit) / "queries.parquet").sort_values(["strategy", "seed", "round", "id"])
    pd.testing.assert_frame_equal(outputs[1].reset_index(drop=True), outputs[2].reset_index(drop=True))
