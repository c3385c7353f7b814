"""Multi-node scenarios on ``ray.cluster_utils.Cluster`` (a head and two worker nodes on one machine).

Each scenario runs in its own process (a test session has one Ray per process) and prints one
line ``RESULT <json>``. Used by tests/test_multinode.py:

    python tests/multinode_scenarios.py spread_and_sweep|node_loss OUTPUT_DIR [SCORING_MODE]
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

SCORERS = ("MapBatches(PoolScorer)", "ShardScorer")  # the streaming pass's actors, the resident ones


def start_cluster(worker_resources: dict[str, float]):
    import ray
    from ray.cluster_utils import Cluster

    if os.environ.get("RAY_TMPDIR"):
        Path(os.environ["RAY_TMPDIR"], "ray").mkdir(parents=True, exist_ok=True)
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 1, "include_dashboard": True})
    workers = [cluster.add_node(num_cpus=2, resources=dict(worker_resources)) for _ in range(2)]
    cluster.wait_for_nodes()
    from osal_ray.cluster import configure_ray_data

    configure_ray_data()
    return ray, cluster, workers


def scorer_actors() -> list:
    from ray.util.state import list_actors

    return [a for a in list_actors(detail=True, limit=1000) if any(name in (a.class_name or "") for name in SCORERS)]


def run(config) -> None:
    from osal_ray.experiment import prepare_experiment, run_experiment

    run_experiment(prepare_experiment(config, log=lambda _: None), log=lambda _: None)


def spread_and_sweep(out: Path) -> dict:
    """One cluster for two checks: scoring actors spread over the workers, and sweep trials too."""
    from tests_config import spread_config, sweep_config

    from osal_ray.sweep import run_sweep

    ray, cluster, workers = start_cluster({"scorer": 1, "trial": 1})
    run(spread_config(out / "spread"))
    nodes = sorted({a.node_id for a in scorer_actors() if a.node_id})
    table = run_sweep(sweep_config(out / "sweep"), log=lambda _: None)
    return {
        "scorer_nodes": nodes,
        "trial_nodes": sorted(set(table["node_id"].dropna())),
        "trial_status": table["status"].tolist(),
        "worker_nodes": sorted(w.node_id for w in workers),
    }


def node_loss(out: Path, mode: str = "auto") -> dict:
    from tests_config import node_loss_config

    ray, cluster, workers = start_cluster({"scorer": 2})
    by_id = {w.node_id: w for w in workers}
    event: dict = {}

    def remove_a_node_mid_pass() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            alive = [a for a in scorer_actors() if a.state == "ALIVE" and a.node_id]
            if len(alive) >= 2:
                time.sleep(0.3)  # let both actors take batches
                victim = alive[0].node_id
                event["removed"] = victim
                event["finished_rounds_before"] = _finished_rounds(out)
                cluster.remove_node(by_id[victim])
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=remove_a_node_mid_pass, daemon=True)
    watcher.start()
    run(node_loss_config(out, mode))
    watcher.join(timeout=5)
    return {**event, "finished_rounds_after": _finished_rounds(out), "worker_nodes": sorted(by_id)}


def _finished_rounds(out: Path) -> int:
    import pandas as pd

    path = out / "rounds.parquet"
    return int(pd.read_parquet(path)["round"].max()) if path.is_file() else -1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    scenario, output, *options = sys.argv[1], Path(sys.argv[2]), *sys.argv[3:]
    result = {"spread_and_sweep": spread_and_sweep, "node_loss": node_loss}[scenario](output, *options)
    print("RESULT " + json.dumps(result), flush=True)
    import ray

    ray.shutdown()
    os._exit(0)  # the cluster's processes die with this process group; no orderly teardown needed
