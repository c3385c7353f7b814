"""Linear probe of frozen features on Fashion-MNIST: the ``simclr`` extractor next to ``pixels``.

Each extractor runs through its real code on the full 60,000-image training pool
(``data.dataset: fashion_mnist``, ``data.train_fraction: 1.0``; the pool holds every class, labels
unused): ``simclr`` trains its encoder once on Ray Train and a Ray Data pass writes the ``features``
column; ``pixels`` fits its PCA. The test set's 10,000 images (all 10 classes; a job's test set holds
only its known classes) go through the same extractor's embedder. A logistic regression on the train
set's (standardised) features is evaluated on the test set. Writes
``benchmarks/results/simclr_features.md`` and ``.json``.

    python benchmarks/simclr_features.py [--params '{"epochs": 10}'] [--output-dir outputs/bench_simclr_features]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from osal_ray.cluster import connect_ray
from osal_ray.config import RayConfig, config_from_dict
from osal_ray.data import build_split, load_dataset, materialize_pool
from osal_ray.data.pool import decode_vectors, pool_paths, read_table
from osal_ray.features import ensure_features, extractor_params
from osal_ray.features.store import features_identity, features_key

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BUDGET_MINUTES = 20


def job(extractor: str, params: dict, output_dir: Path):
    return config_from_dict({
        "name": "bench-simclr-features", "output_dir": str(output_dir), "strategies": ["random"],
        "data": {"dataset": "fashion_mnist", "train_fraction": 1.0},
        "model": {"classifier": "linear"}, "train": {"num_workers": 0},
        "features": {"extractor": extractor, "params": params},
    })


def test_table(source) -> pa.Table:
    """Every test image (all classes) in the pool's stored form."""
    images = np.ascontiguousarray(source.test.images)
    width = int(np.prod(images.shape[1:]))
    column = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(images), [None, pa.py_buffer(images.tobytes())])
    return pa.table({"id": np.arange(len(images), dtype=np.int64), "image": column})


def extract(config, manifest, source) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """(train features, train labels, test features, test labels, seconds of the extractor on the pool)."""
    started = time.perf_counter()
    featured = ensure_features(manifest, config, print)
    seconds = time.perf_counter() - started
    table = read_table(pool_paths(featured), ["features", "label"])
    train = decode_vectors(table.column("features"), featured.vector_columns["features"])
    extractor, params = extractor_params(config)
    store = Path(manifest.directory).parent / features_key(features_identity(config, manifest))
    embedder = extractor.embedder(params, config, manifest, store)  # the fitted state is stored: nothing is fitted again
    embed = embedder.cls(**embedder.kwargs, manifest=manifest.to_dict(), column="features", use_gpu=False, threads=os.cpu_count() or 1)
    tests = test_table(source)
    parts = [embed(tests.slice(start, embedder.batch_size)) for start in range(0, tests.num_rows, embedder.batch_size)]
    test = np.concatenate([decode_vectors(p.column("features"), train.shape[1]) for p in parts])
    return train, table.column("label").to_numpy(), test, source.test.labels, seconds


def linear_probe(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train)
    probe = LogisticRegression(max_iter=1000, C=1.0).fit(scaler.transform(train), y_train)
    return float((probe.predict(scaler.transform(test)) == y_test).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="{}", help="simclr features.params over the extractor's defaults (JSON)")
    parser.add_argument("--output-dir", default=str(REPO / "outputs" / "bench_simclr_features"))
    parser.add_argument("--fresh", action="store_true", help="delete the stores first (train again)")
    args = parser.parse_args()
    out = Path(args.output_dir)
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    load_before = os.getloadavg()
    configs = {"simclr": job("simclr", json.loads(args.params), out), "pixels": job("pixels", {}, out)}
    source = load_dataset(configs["simclr"].data)
    split = build_split(configs["simclr"].data, source.train.labels, source.test.labels, source.class_names, 0)
    manifest = materialize_pool(source, split, out / "data" / "seed_0", configs["simclr"].data.pool_files)
    connect_ray(RayConfig(num_cpus=4, object_store_memory_mb=1024))
    rows = []
    for name, config in configs.items():
        train, y_train, test, y_test, seconds = extract(config, manifest, source)
        started = time.perf_counter()
        accuracy = linear_probe(train, y_train, test, y_test)
        rows.append({"extractor": name, "params": extractor_params(config)[1].to_dict(), "dim": int(train.shape[1]),
                     "train_images": len(train), "test_images": len(test), "extractor_seconds": round(seconds, 1),
                     "probe_seconds": round(time.perf_counter() - started, 1), "accuracy": round(accuracy, 4)})
        print(f"{name}: {train.shape[1]} dims, {seconds:.0f} s, linear probe {accuracy:.4f}", flush=True)
    write_results(rows, args, load_before)


def write_results(rows: list[dict], args, load_before: tuple[float, float, float]) -> None:
    command = "python benchmarks/simclr_features.py" + (f" --params '{args.params}'" if args.params != "{}" else "")
    machine = {"node": platform.node(), "machine": platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(), "load_average_before": [round(v, 2) for v in load_before]}
    import torch

    machine["torch"] = torch.__version__
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "simclr_features.json").write_text(json.dumps({"command": command, "machine": machine, "rows": rows}, indent=1))
    lines = [
        "# Linear probe of frozen features, Fashion-MNIST (10 classes)", "",
        f"`{command}` on {machine['node']} ({machine['machine']}, {machine['cores']} cores, torch {machine['torch']}; "
        f"load average before {machine['load_average_before'][0]}). The extractor on the 60,000 training images "
        f"(simclr: encoder training on Ray Train, in-process, plus the Ray Data pass; budget {BUDGET_MINUTES} min); "
        "logistic regression (scikit-learn, standardised features) on those, accuracy on the 10,000 test images.", "",
        "| extractor | dims | extractor s | probe s | test accuracy |", "|---|---|---|---|---|",
        *[f"| {r['extractor']} | {r['dim']} | {r['extractor_seconds']:.0f} | {r['probe_seconds']:.0f} | {r['accuracy']:.4f} |" for r in rows],
        "", "Parameters:", "",
        *[f"- {r['extractor']}: `{json.dumps(r['params'])}`" for r in rows], "",
    ]
    (RESULTS / "simclr_features.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
