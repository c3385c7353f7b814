"""How the K+1 detector's loss settings decide whether it learns: reduction of the weighted loss, temperature.

JSOSAL's Eq. 1 weights each sample's cross-entropy by w_c = N / n_c; read literally, the batch loss
is (1/B) sum_i w_{y_i} CE_i (``mean``), while PyTorch divides by the weights' sum instead
(``weighted_mean``). This script trains the detector as a run does (the job's network, epochs and
learning rate; in-process, no Ray) on labeled sets like those of an active-learning round, a random
draw of ``--known`` known-class and ``--unknown`` unknown samples of a benchmark setting's pool,
for every combination of reduction and temperature, and reports the final training loss and the
AUROC of the detector's known-vs-unknown logit margin on the rest of the pool. Repeats are
training seeds (and labeled draws). Writes ``benchmarks/results/detector_loss.md`` and ``.json``.

    python benchmarks/detector_loss.py [--setting mismatch_k6] [--known 60 120 220] [--unknown 20 60 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from osal_ray.config import load_config
from osal_ray.data import build_split, load_dataset, materialize_pool
from osal_ray.data.pool import pool_paths, read_labels, read_table, model_input
from osal_ray.experiment.metrics import auroc
from osal_ray.training.checkpoints import NetworkSpec, load_network
from osal_ray.training.worker import InProcessSession, TrainJob, train_loop_per_worker

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
VARIANTS = {
    "weighted_mean, T=0.5": {"class_weight_reduction": "weighted_mean", "temperature": 0.5},
    "mean, T=0.5": {"class_weight_reduction": "mean", "temperature": 0.5},
    "weighted_mean, T=1": {"class_weight_reduction": "weighted_mean", "temperature": 1.0},
    "unweighted, T=0.5": {"class_weights": "none", "temperature": 0.5},
}


def main() -> None:
    import yaml

    spec = yaml.safe_load((REPO / "benchmarks" / "open_set_settings.yaml").read_text())
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", default="mismatch_k6", choices=list(spec["settings"]))
    parser.add_argument("--known", type=int, nargs="+", default=[60, 120, 220])
    parser.add_argument("--unknown", type=int, nargs="+", default=[20, 60, 100])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    overrides = [f"{k}={v}" for k, v in {**spec.get("common", {}), **spec["settings"][args.setting]["set"]}.items()]
    config = load_config(str(REPO / spec["base"]), overrides)
    source = load_dataset(config.data)
    split = build_split(config.data, source.train.labels, source.test.labels, source.class_names, seed=0)
    work = Path(tempfile.mkdtemp(prefix="detector-loss-"))
    manifest = materialize_pool(source, split, work / "pool", config.data.pool_files)
    ids, labels = read_labels(pool_paths(manifest))
    known_class = {c: i for i, c in enumerate(manifest.known_classes)}
    target = np.array([known_class.get(int(label), manifest.num_known) for label in labels])
    table = read_table(pool_paths(manifest), ["image"])
    images = model_input(table, manifest, "image")
    order = np.searchsorted(ids, table.column("id").to_numpy())

    rows = []
    for n_known, n_unknown in zip(args.known, args.unknown):
        results = {name: [] for name in VARIANTS}
        for repeat in range(args.repeats):
            rng = np.random.default_rng(repeat)
            chosen = np.concatenate([rng.choice(np.flatnonzero(target < manifest.num_known), n_known, replace=False),
                                     rng.choice(np.flatnonzero(target == manifest.num_known), n_unknown, replace=False)])
            rest = np.setdiff1d(np.arange(len(ids)), chosen)
            for name, params in VARIANTS.items():
                loss, margin = _train(config, manifest, ids[chosen], target[chosen], repeat, params, images, work)
                is_known = target[order] < manifest.num_known
                in_rest = np.isin(order, rest)
                results[name].append((loss, auroc(margin[in_rest], is_known[in_rest])))
        for name, values in results.items():
            rows.append({"known": n_known, "unknown": n_unknown, "variant": name,
                         "loss": [v[0] for v in values], "auroc": [v[1] for v in values]})
            print(f"{n_known:>5} known {n_unknown:>4} unknown  {name:<22} loss {_summary([v[0] for v in values])}  "
                  f"AUROC {_summary([v[1] for v in values])}", flush=True)
    _write(rows, args, config)


def _train(config, manifest, ids, labels, seed, params, images, work) -> tuple[float, np.ndarray]:
    spec = NetworkSpec(config.model.classifier, manifest.num_known + 1, manifest.image_shape[2], manifest.image_shape[0],
                       dict(config.model.kwargs))
    folder = work / "detector"
    objective = {"class_weights": "inverse_frequency", **params}
    job = TrainJob("detector", spec, manifest, ids.tolist(), labels.tolist(), seed, config.train,
                   objective_params=objective, local_checkpoint_dir=str(folder))
    session = InProcessSession()
    train_loop_per_worker(job.to_config(), session=session)
    model, _ = load_network(folder / "model.pt")
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(images[s : s + 4096]) for s in range(0, len(images), 4096)]).numpy()
    k = manifest.num_known
    return float(session.metrics["loss"]), logits[:, :k].max(axis=1) - logits[:, k]


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


def _write(rows: list[dict], args, config) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "detector_loss.json").write_text(json.dumps({"setting": args.setting, "rows": rows}, indent=1))
    lines = [
        "# The detector's loss: reduction of the class-weighted cross-entropy, and temperature", "",
        f"`python benchmarks/detector_loss.py --setting {args.setting} --known {' '.join(map(str, args.known))} "
        f"--unknown {' '.join(map(str, args.unknown))} --repeats {args.repeats}` on {platform.node()} ({platform.machine()}). "
        f"Fashion-MNIST `{args.setting}` pool, the job's detector ({config.model.classifier} {config.model.kwargs}, "
        f"{config.train.epochs} epochs, lr {config.train.lr}), class weights N / n_c unless said otherwise. "
        "Median (min, max) over repeats of the final training loss and of the AUROC of the known-vs-unknown logit "
        "margin on the rest of the pool.", "",
        "| labeled known | labeled unknown | variant | final training loss | known-vs-unknown AUROC |",
        "| ---: | ---: | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(f"| {row['known']} | {row['unknown']} | {row['variant']} | {_summary(row['loss'])} | {_summary(row['auroc'])} |")
    (RESULTS / "detector_loss.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
