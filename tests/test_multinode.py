"""A head and two worker nodes on one machine (ray.cluster_utils.Cluster): scoring actors spread over
both workers and give the single-node queries, and a sweep's trials land on both workers; losing
a worker while the pool is scored still finishes the round with the same queries."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from tests_config import node_loss_config, spread_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]
HERE = Path(__file__).parent


def _scenario(name: str, out: Path, *options: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "multinode_scenarios.py"), name, str(out), *options],
        capture_output=True, text=True, timeout=600, env=env, cwd=HERE.parent, start_new_session=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(lines[-1][len("RESULT "):])


def _reference(config) -> pd.DataFrame:
    from osal_ray.experiment import prepare_experiment, run_experiment

    run_experiment(prepare_experiment(config, log=lambda _: None), log=lambda _: None)
    return pd.read_parquet(config.resolved_output_dir() / "queries.parquet")


def test_scoring_actors_and_sweep_trials_spread_over_both_workers(ray_session, tmp_path):
    result = _scenario("spread_and_sweep", tmp_path / "cluster")
    assert result["scorer_nodes"] == result["worker_nodes"]  # one scoring actor on each worker node
    reference = _reference(_single_node(spread_config(tmp_path / "single")))
    pd.testing.assert_frame_equal(reference, pd.read_parquet(tmp_path / "cluster" / "spread" / "queries.parquet"))
    assert result["trial_status"] == ["ok", "ok"]
    assert result["trial_nodes"] == result["worker_nodes"]  # the two concurrent trials, one per worker


@pytest.mark.parametrize("mode", ["resident", "streaming"])
def test_losing_a_worker_while_scoring_still_finishes_the_round_with_the_same_queries(ray_session, tmp_path, mode):
    result = _scenario("node_loss", tmp_path / "cluster", mode)
    assert result["removed"] in result["worker_nodes"]
    assert result["finished_rounds_before"] < 1 <= result["finished_rounds_after"]  # removed during round 1
    reference = _reference(_single_node(node_loss_config(tmp_path / "single", mode)))
    pd.testing.assert_frame_equal(reference, pd.read_parquet(tmp_path / "cluster" / "queries.parquet"))



def _single_node(config):
    """The same run on the test session's single node: same actors, blocks and batches, no placement resources.

    (Scores are float32: other batch shapes may change their last bits and flip near-ties.)
    """
    return dataclasses.replace(config, scoring=dataclasses.replace(config.scoring, resources_per_actor={}))
