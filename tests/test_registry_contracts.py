"""Contract tests over every registry, timm-style: parametrised over what is registered, so a new entry
is tested the moment it is registered (and fails here until it meets the contract or gets an entry below).

- every model x every head (and no head): built through ``NetworkSpec`` (the front door the runs use),
  output shapes, a backward pass that reaches every trainable parameter, and a checkpoint round trip
  through ``save_network`` / ``load_network`` (weights-only) that reproduces the outputs exactly;
- every training objective: one optimisation step on a tiny batch with the network it trains, a finite
  loss and a gradient for every trainable parameter (what DistributedDataParallel needs);
- every score column: computed by the scoring pass's own ``PoolScorer`` on a tiny pyarrow batch from
  networks planned by ``plan_strategy``, against the shape its description declares and the dtypes the
  pass can carry;
- every dataset: loaded through ``load_dataset`` from a small fixture in its real on-disk format.

Kept fast (tiny widths, 8x8 inputs, one step): the whole file runs in seconds on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from osal_ray.config import DataConfig, ExperimentConfig, ModelConfig
from osal_ray.data import DATASETS, ImagePoolSource, SourceDataset, load_dataset
from osal_ray.data.pool import PoolManifest, vector_column
from osal_ray.models import MODELS, model_input
from osal_ray.models.heads import HEADS
from osal_ray.training.checkpoints import NetworkSpec, load_network, save_network
from osal_ray.training.objectives import OBJECTIVES

# ============================================================================ objective parameters
# Example parameters of every registered objective, in ONE place (they become typed dataclasses:
# adapt here and in ``make_objective`` only). An objective registered without an entry fails
# ``test_every_objective_has_example_params`` and its own contract test.
OBJECTIVE_PARAMS: dict[str, dict] = {
    # The weighted path (JSOSAL's detector), not just plain cross-entropy.
    "cross_entropy": {"temperature": 0.5, "class_weights": "inverse_frequency", "class_weight_reduction": "mean"},
    "learning_loss": {"weight": 1.0, "margin": 1.0, "detach_fraction": 0.6},
    "eoal": {"temperature": 0.5, "pareto_alpha": 0.8, "cluster_weight": 0.1, "clusters_per_class": 1},
    "simclr": {"temperature": 0.5},
    "energy_margin": {"temperature": 0.5, "energy_weight": 0.01, "m_in": -25.0, "m_out": -7.0},
    "pseudo_classes": {"open_weight": 1.0, "open_loss": "edl"},
    "negative_learning": {"nl_fraction": 1.0},  # negative learning from the first epoch (the phase with its own loss)
}


def make_objective(name: str, num_outputs: int, labels: np.ndarray):
    """The registered objective ``name`` with its example parameters, on the CPU, seeded."""
    if name not in OBJECTIVE_PARAMS:
        pytest.fail(f"objective {name!r} is registered but has no example parameters: add it to OBJECTIVE_PARAMS")
    return OBJECTIVES.get(name)(OBJECTIVE_PARAMS[name], num_outputs, np.asarray(labels), torch.device("cpu"),
                                torch.Generator().manual_seed(0))


# Which network (role, head) each objective trains, as the strategies' plans pair them
# (``test_objective_cases_cover_every_network_the_strategies_train`` keeps this in step with
# the strategies' plans, ``osal_ray.experiment.plan``). An objective missing here is tried on a plain classifier.
OBJECTIVE_NETWORKS: dict[str, list[tuple[str, str | None]]] = {
    "cross_entropy": [("classifier", None), ("detector", None), ("classifier", "mc_dropout")],
    "learning_loss": [("classifier", "loss_prediction")],
    "eoal": [("detector", "ova")],
    "simclr": [("ssl", "projection")],
    "energy_margin": [("detector", None)],
    "pseudo_classes": [("classifier", "pseudo_classes")],
    "negative_learning": [("negative", None)],
}
# Objectives whose K-output network also trains on samples of label K (E2OAL's labeled unknowns as
# pseudo-classes, BUAL's unlabeled pool sample), as the plans' ``with_invalid`` / ``pool_sample`` give them.
OBJECTIVES_WITH_LABEL_K = {"pseudo_classes", "negative_learning"}
# Objectives that augment images and refuse any other input (SimCLR's random crops and flips).
# Nothing in the registry declares this (no input requirement on objectives); with a model that reads a cached
# feature the contract is a clear ValueError, not a crash deep inside.
OBJECTIVES_NEEDING_IMAGES = {"simclr"}

# ============================================================================ shared tiny setup
K = 4  # known classes (not 2 or 3: the one-vs-all logits (N, 2, K) must not be mistakable for (N, K, 2))
N = 6  # batch of the model tests
FEATURE_DIM = 16  # size of the cached CLIP embedding column of the fake pool

# Small widths so that every architecture runs in milliseconds; a model missing here is built with its defaults.
MODEL_KWARGS: dict[str, dict] = {
    "cnn": {"width": 4, "embedding": 8},
    "mlp": {"hidden": 8},
    "resnet18_cifar": {"width": 4},
    "clip_linear": {},
    "linear": {},
    "mlp_head": {"hidden": 8},
}

# Non-default keyword arguments per head (so that they are seen to reach it), and the extra
# outputs each head adds with ``all_outputs=True``: name -> shape, for a batch of n and a network
# of k outputs. Heads do not declare their extras in the registry (names or shapes): a head
# registered without an entry here fails ``test_every_head_has_a_contract``.
HEAD_KWARGS: dict[str, dict] = {
    "loss_prediction": {"hidden": 4},
    "ova": {},
    "projection": {"dim": 5},
    "mc_dropout": {"p": 0.5, "samples": 3},
    "pseudo_classes": {"count": 3},
}
HEAD_EXTRAS = {
    None: lambda n, k: {},
    "loss_prediction": lambda n, k: {"predicted_loss": (n,)},
    "ova": lambda n, k: {"ova_logits": (n, 2, k - 1)},  # K+1 network: K one-vs-all heads of [negative, positive]
    "projection": lambda n, k: {"projection": (n, 5)},
    "mc_dropout": lambda n, k: {"bald": (n,)},
    "pseudo_classes": lambda n, k: {"open_logits": (n, k + 3)},  # K known then count=3 pseudo-class logits
}

# A pool as the runs see it, reduced to what the network plans and the scoring pass read: 8x8 RGB
# images, K of 6 classes known, and a cached CLIP embedding column for ``clip_linear`` and VLPure.
MANIFEST = PoolManifest(
    directory="/nonexistent/pool", dataset="fake", image_shape=(8, 8, 3), pixel_max=255.0,
    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), class_names=("a", "b", "c", "d", "e", "f"),
    known_classes=tuple(range(K)), pool_files=(), test_file="test.parquet", num_pool=0, num_initial=0, num_test=0,
    fingerprint="contract", vector_columns={"clip_embedding": FEATURE_DIM, "features": FEATURE_DIM},
)
CONFIG = ExperimentConfig(model=ModelConfig(classifier="cnn", kwargs=dict(MODEL_KWARGS["cnn"])))


@functools.cache
def strategy_plans() -> dict:
    """Every registered strategy as a job with CONFIG plans it (``osal_ray.experiment.plan``): its score
    columns and the recipe of every network it trains."""
    from osal_ray.experiment.plan import plan_strategy
    from osal_ray.strategies import STRATEGIES

    return {name: plan_strategy(CONFIG, name) for name in STRATEGIES.names()}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: threads only contend (2 cores shared with the rest of a CI run); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spec_for(model: str, num_outputs: int, head: str | None = None) -> NetworkSpec:
    """The spec of ``model`` reading its registered input column of MANIFEST, as ``NetworkRecipe.spec`` builds it."""
    column = model_input(model)
    channels, side = MANIFEST.input_size(column)
    return NetworkSpec(model, num_outputs, channels, side, dict(MODEL_KWARGS.get(model, {})), input=column,
                       head=head, head_kwargs=dict(HEAD_KWARGS.get(head, {})) if head else {})


def sample_batch(spec: NetworkSpec, n: int, seed: int = 0) -> torch.Tensor:
    """A batch of the spec's input: normalised images (n, C, H, W), or cached features (n, D)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (n, spec.in_channels, spec.image_size, spec.image_size) if spec.input == "image" else (n, spec.in_channels)
    return torch.randn(shape, generator=generator)


def trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def weighted_sum(outputs: dict[str, torch.Tensor], seed: int = 1) -> torch.Tensor:
    """A scalar of every output, with random weights (a plain sum of normalised or softmax-like
    outputs can have a zero gradient by symmetry)."""
    generator = torch.Generator().manual_seed(seed)
    return sum((v.float() * torch.randn(v.shape, generator=generator)).sum() for v in outputs.values())


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "backbone", model)


# ============================================================================ models x heads
MODEL_HEAD_CASES = [
    pytest.param(model, head, id=f"{model}-{head or 'no_head'}")
    for model in MODELS.names()
    for head in [None, *HEADS.names()]
]


def test_every_head_has_a_contract():
    assert set(HEADS.names()) == set(HEAD_EXTRAS) - {None}, "add the head's extra outputs to HEAD_EXTRAS (and stale entries go)"
    assert set(HEAD_KWARGS) <= set(HEADS.names())
    assert set(MODEL_KWARGS) <= set(MODELS.names()), "a stale MODEL_KWARGS entry"


@pytest.mark.parametrize("model_name, head", MODEL_HEAD_CASES)
def test_model_and_head(model_name, head, tmp_path, monkeypatch):
    # No pair is excluded: every registered head fits every registered backbone (any K >= 2 for
    # ova, image or feature inputs for all). A pair that cannot work should be refused by a rule
    # the registry declares, which would then be read here.
    if head not in HEAD_EXTRAS:
        pytest.fail(f"head {head!r} has no entry in HEAD_EXTRAS")
    torch.manual_seed(0)
    spec = spec_for(model_name, K, head)
    model = spec.build()
    x = sample_batch(spec, N)
    embedding_dim = backbone_of(model).embedding_dim

    # Training mode: every declared output has its shape, and a scalar of them reaches every trainable parameter.
    model.train()
    out = model(x, all_outputs=True)
    expected = {"logits": (N, K), "embedding": (N, embedding_dim), **HEAD_EXTRAS[head](N, K)}
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    assert all(torch.isfinite(v).all() for v in out.values())
    params = trainable(model)
    assert params, "nothing to train"
    weighted_sum(out).backward()
    unreached = [name for name, p in params if p.grad is None]
    assert not unreached, f"outputs do not reach trainable parameters {unreached}"
    assert all(torch.isfinite(p.grad).all() for _, p in params)
    # The only frozen parameters are the projection head's unused classifier layer (see heads.py: it
    # never feeds the contrastive loss, and DistributedDataParallel would wait for its gradient).
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ([n for n, _ in model.named_parameters() if n.startswith("backbone.head.")] if head == "projection" else [])
    torch.optim.SGD([p for _, p in params], lr=0.1).step()  # trained weights, not the initial ones

    # Evaluation mode: plain forward, all_outputs and forward_all (what the scoring pass calls) agree.
    model.eval()
    with torch.no_grad():
        reference = model(x, all_outputs=True)
        torch.testing.assert_close(model(x), reference["logits"], rtol=0, atol=0)
        via_forward_all = model.forward_all(x).as_dict()
    assert via_forward_all.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(via_forward_all[key], reference[key], rtol=0, atol=0)

    # Checkpoint round trip through the project's own functions; the load must be weights-only.
    save_network(model, spec, tmp_path / "model.pt")
    loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    loaded, loaded_spec = load_network(tmp_path, expected=spec)
    monkeypatch.undo()
    assert loads and all(kw.get("weights_only") is True for kw in loads), f"torch.load called with {loads}"
    assert loaded_spec == spec and type(loaded) is type(model)
    loaded.eval()
    with torch.no_grad():
        again = loaded(x, all_outputs=True)
        fresh = spec.build().eval()(x, all_outputs=True)
    assert again.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(again[key], reference[key], rtol=0, atol=0)
    # The comparison can fail: a freshly initialised network of the same spec gives other outputs.
    assert any(not torch.equal(fresh[key], reference[key]) for key in reference)


# ============================================================================ objectives
ROLE_OUTPUTS = {"classifier": K, "detector": K + 1, "ssl": 1, "negative": K}  # as experiment/networks.py plans them


def role_labels(role: str, n: int, objective: str | None = None) -> np.ndarray:
    """Training labels of a network of ``role`` (networks.NetworkPlan.training_set): the known classes;
    the detector (and the objectives of OBJECTIVES_WITH_LABEL_K) also has samples of label K; the
    self-supervised encoder has label 0 (unused)."""
    if role == "ssl":
        return np.zeros(n, dtype=np.int64)
    labels = np.arange(n, dtype=np.int64) % K
    if role == "detector" or objective in OBJECTIVES_WITH_LABEL_K:
        labels[-(n // 3):] = K
    return labels


OBJECTIVE_CASES = [
    pytest.param(name, role, head, model, id=f"{name}-{role}-{head or 'no_head'}-{model}")
    for name in OBJECTIVES.names()
    for role, head in OBJECTIVE_NETWORKS.get(name, [("classifier", None)])
    for model in MODELS.names()
]


def test_every_objective_has_example_params():
    assert set(OBJECTIVES.names()) == set(OBJECTIVE_PARAMS), "OBJECTIVE_PARAMS must name exactly the registered objectives"
    assert set(OBJECTIVE_NETWORKS) <= set(OBJECTIVES.names()), "a stale OBJECTIVE_NETWORKS entry"


@pytest.mark.parametrize("name, role, head, model_name", OBJECTIVE_CASES)
def test_objective_one_step(name, role, head, model_name):
    torch.manual_seed(0)
    spec = spec_for(model_name, ROLE_OUTPUTS[role], head)
    model = spec.build().train()
    n = 12
    x = sample_batch(spec, n)
    y = torch.as_tensor(role_labels(role, n, name))
    objective = make_objective(name, spec.num_outputs, y.numpy())
    if name in OBJECTIVES_NEEDING_IMAGES and spec.input != "image":
        with pytest.raises(ValueError, match="image"):
            objective.loss(model, x, y, torch.arange(n))
        return
    objective.start_epoch(model, x, y, 0, 10)
    assert model.training, "start_epoch must leave the model in training mode"
    params = trainable(model)
    optimizer = torch.optim.SGD([p for _, p in params], lr=0.01)
    optimizer.zero_grad()
    loss = objective.loss(model, x, y, torch.arange(n))
    assert loss.dim() == 0 and torch.isfinite(loss), f"loss {loss}"
    loss.backward()
    # DistributedDataParallel (train.num_workers >= 2) fails on a trainable parameter the loss never reaches.
    # No objective has a legitimately unreached parameter today: learning loss detaches the module's
    # input features only late in training (and the backbone still gets the cross-entropy's gradient),
    # the projection head freezes the one layer the contrastive loss does not use.
    unreached = [p_name for p_name, p in params if p.grad is None]
    assert not unreached, f"{name} leaves trainable parameters without a gradient: {unreached}"
    assert all(torch.isfinite(p.grad).all() for _, p in params)
    before = [p.detach().clone() for _, p in params]
    optimizer.step()
    assert any(not torch.equal(b, p) for b, (_, p) in zip(before, params)), "the step changed nothing"
    assert all(torch.isfinite(p).all() for _, p in params)
    assert torch.isfinite(objective.loss(model, x, y, torch.arange(n)))


def test_objective_cases_cover_every_network_the_strategies_train():
    """Every (network, head, objective) a strategy's plan trains is a case above, with the outputs and
    training labels assumed there, and the objective accepts the typed parameters the plan resolved."""
    problems = []
    for strategy_name, plan in strategy_plans().items():
        for recipe in plan.networks:
            where = f"{strategy_name}/{recipe.name}"
            spec = recipe.spec(MANIFEST)
            if (recipe.name, recipe.head) not in OBJECTIVE_NETWORKS.get(recipe.objective, [("classifier", None)]):
                problems.append(f"{where}: ({recipe.name}, {recipe.head}) trained with {recipe.objective} is not in OBJECTIVE_NETWORKS")
            if spec.num_outputs != ROLE_OUTPUTS.get(recipe.name):
                problems.append(f"{where}: {spec.num_outputs} outputs, ROLE_OUTPUTS says {ROLE_OUTPUTS.get(recipe.name)}")
            _, labels = recipe.training_set(list(range(8)), [i % K for i in range(8)], [8, 9, 10, 11], K, lambda: np.arange(20))
            expected = set(role_labels(recipe.name, 12, recipe.objective).tolist())
            if set(labels) != expected:
                problems.append(f"{where}: trains on labels {sorted(set(labels))}, role_labels gives {sorted(expected)}")
            try:
                OBJECTIVES.get(recipe.objective)(recipe.objective_params, spec.num_outputs, np.asarray(labels), torch.device("cpu"),
                                                 torch.Generator())
            except Exception as exc:  # noqa: BLE001  (collect every refusal, then fail once)
                problems.append(f"{where}: {recipe.objective} refuses the plan's parameters {recipe.objective_params!r}: {exc}")
    assert not problems, "\n".join(problems)


# ============================================================================ score columns
try:  # the scoring package imports the strategies: a broken import fails these tests, not the whole file
    from osal_ray.scoring import COLUMNS

    COLUMN_NAMES = COLUMNS.names()
    SCORING_IMPORT_ERROR = None
except Exception as exc:  # noqa: BLE001
    COLUMNS, COLUMN_NAMES, SCORING_IMPORT_ERROR = None, ["<osal_ray.scoring does not import>"], exc

# Per-round context arrays, by name: their shape (the providers need CLIP weights, not here). Today
# every context is one row per known class in the CLIP embedding space (scoring/clip.py).
CONTEXT_SHAPES = {
    "clip_text_yes": (K, FEATURE_DIM),
    "clip_text_no": (K, FEATURE_DIM),
    "clip_class_means": (K, FEATURE_DIM),
}


def test_every_context_has_a_shape():
    if SCORING_IMPORT_ERROR is not None:
        pytest.fail(f"osal_ray.scoring does not import: {SCORING_IMPORT_ERROR!r}")
    from osal_ray.scoring.context import CONTEXT

    assert set(CONTEXT.names()) == set(CONTEXT_SHAPES), "CONTEXT_SHAPES must name exactly the registered context arrays"


DECLARED_SHAPE = re.compile(r"\(N((?:, [A-Z])*)\)")


def declared_shape(description: str) -> tuple[str, ...]:
    """The shape a column's description declares, e.g. ``("N", "K")``; no declaration means one value per sample."""
    found = DECLARED_SHAPE.findall(description)
    assert len(found) <= 1, f"ambiguous shape in {description!r}"
    return ("N", *(s.strip() for s in found[0].split(",") if s.strip())) if found else ("N",)


def pool_batch(n: int, seed: int = 0) -> pa.Table:
    """Rows of the fake pool as Parquet holds them: id, the image as fixed-size binary, the stored vectors."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *MANIFEST.image_shape), dtype=np.uint8)
    columns = {
        "id": pa.array(np.arange(100, 100 + n, dtype=np.int64)),
        "image": pa.FixedSizeBinaryArray.from_buffers(pa.binary(MANIFEST.image_bytes), n, [None, pa.py_buffer(images.tobytes())]),
    }
    for name, dim in MANIFEST.vector_columns.items():
        columns[name] = vector_column(rng.normal(size=(n, dim)).astype(np.float32))
    return pa.table(columns)


@pytest.mark.parametrize("column_name", COLUMN_NAMES)
def test_score_column(column_name, tmp_path):
    if SCORING_IMPORT_ERROR is not None:
        pytest.fail(f"osal_ray.scoring does not import: {SCORING_IMPORT_ERROR!r}")
    from conftest import synthetic_column

    from osal_ray.experiment.networks import network_recipes
    from osal_ray.scoring.columns import context_for, networks_for
    from osal_ray.scoring.pool_pass import PoolScorer

    column = COLUMNS.get(column_name)
    # The networks are trained as the first strategy that needs this column plans them (its head: a
    # loss predictor for predicted_loss, one-vs-all heads for ova_closed_entropy, ...); a column that
    # no strategy needs gets the default recipes.
    needed = networks_for([column_name])
    users = [plan for plan in strategy_plans().values() if column_name in plan.columns]
    recipes = users[0].networks if users else network_recipes(CONFIG, "contract_probe", needed, {})
    specs = {recipe.name: recipe.spec(MANIFEST) for recipe in recipes}
    assert needed <= set(specs), f"{column_name} reads network(s) {needed - set(specs)} that no plan trains"
    checkpoints = {}
    for name in sorted(needed):
        torch.manual_seed(0)
        save_network(specs[name].build(), specs[name], tmp_path / f"{name}.pt")
        checkpoints[name] = str(tmp_path / f"{name}.pt")
    missing_context = context_for([column_name]) - set(CONTEXT_SHAPES)
    assert not missing_context, f"add the shape of context {missing_context} to CONTEXT_SHAPES"
    rng = np.random.default_rng(1)
    context = {name: rng.normal(size=CONTEXT_SHAPES[name]).astype(np.float32) for name in context_for([column_name])}

    # The pass's own actor class, on one batch (no Ray): only the declared networks, stored columns and
    # context are there, so a column reading anything undeclared fails here.
    scorer = PoolScorer(MANIFEST.to_dict(), checkpoints, [column_name], context, use_gpu=False, threads=torch.get_num_threads())
    raw = []

    def recording(inputs):
        values = column.compute(inputs)
        raw.append(values)
        return values

    scorer.columns = [dataclasses.replace(c, compute=recording) for c in scorer.columns]
    n = 5
    result = scorer(pool_batch(n))
    values = result[column_name]
    assert result["id"].tolist() == list(range(100, 100 + n))

    # dtype: the pass keeps int64 and turns everything else into float32; a column returning any other
    # integer or a boolean would silently become floats.
    (tensor,) = raw
    assert tensor.dtype == torch.int64 or tensor.dtype.is_floating_point, f"{column_name} computes {tensor.dtype}"
    assert values.dtype in (np.int64, np.float32)
    assert np.isfinite(values).all()
    # shape: what the description declares, "(N, K)" with K the known classes, "(N, D)" any width, else (N,).
    sizes = {"N": n, "K": K}
    shape = declared_shape(column.description)
    assert values.ndim == len(shape), f"{column_name}: shape {values.shape}, declared {shape}"
    for axis, symbol in enumerate(shape):
        assert values.shape[axis] == sizes.get(symbol, values.shape[axis]) and values.shape[axis] > 0, (
            f"{column_name}: shape {values.shape}, declared {shape}")
    # The strategy tests' stand-in for this column (tests/conftest.py) has the same shape and kind.
    stand_in = np.asarray(synthetic_column(column_name, n, K, np.random.default_rng(0)))
    assert stand_in.ndim == values.ndim and stand_in.dtype.kind == values.dtype.kind, (
        f"{column_name}: the pass gives {values.dtype} {values.shape}, conftest.synthetic_column {stand_in.dtype} {stand_in.shape}")
    if "K" in shape:
        assert stand_in.shape[shape.index("K")] == K


# ============================================================================ datasets
def _cifar10(tmp_path: Path):
    from test_datasets import _write_cifar10

    _write_cifar10(tmp_path)
    return DataConfig(dataset="cifar10", root=str(tmp_path), verify_checksums=False), 10


def _cifar100(tmp_path: Path):
    import pickle

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for name, n in (("train", 12), ("test", 5)):
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": [int(i) for i in rng.integers(0, 100, n)],
                 "coarse_labels": [0] * n}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"class{i}" for i in range(100)],
                                                "coarse_label_names": [f"super{i}" for i in range(20)]}))
    return DataConfig(dataset="cifar100", root=str(tmp_path), verify_checksums=False), 100


def _fashion_mnist(tmp_path: Path):
    from test_datasets import _write_fashion

    _write_fashion(tmp_path, n_train=12, n_test=10)
    return DataConfig(dataset="fashion_mnist", root=str(tmp_path)), 10


def _image_folder(tmp_path: Path):
    from test_datasets import _write_image_folder

    _write_image_folder(tmp_path / "train", ["cat", "dog", "owl"], 2)
    _write_image_folder(tmp_path / "test", ["cat", "dog", "owl"], 1)
    return DataConfig(dataset="image_folder", root=str(tmp_path), image_size=8), 3


def _image_pool(tmp_path: Path):
    from test_image_pool import _layout, _png

    root = _layout(tmp_path, unlabeled=3, classes=("cat", "dog"))
    for folder in ("labeled/unknown", "test/cat", "test/bird"):  # an invalid example; test images, one of a class not known
        (root / folder).mkdir(parents=True)
        (root / folder / "t.png").write_bytes(_png(np.full((10, 6), len(folder), np.uint8)))
    return DataConfig(dataset="image_pool", root=str(root), image_size=8), 2


# name -> builder(tmp_path) -> (config, number of classes); digits ships with scikit-learn, synthetic is generated.
DATASET_FIXTURES = {
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "digits": lambda tmp_path: (DataConfig(dataset="digits"), 10),
    "fashion_mnist": _fashion_mnist,
    "image_folder": _image_folder,
    "image_pool": _image_pool,
    "synthetic": lambda tmp_path: (DataConfig(dataset="synthetic", num_samples=100, num_classes=3, image_size=8), 3),
}


def test_every_dataset_has_a_fixture():
    assert set(DATASETS.names()) == set(DATASET_FIXTURES), "DATASET_FIXTURES must name exactly the registered datasets"


def _check_split(split, num_classes: int, pixel_max: float, shape: tuple[int, ...]) -> None:
    assert split.images.dtype == np.uint8 and split.images.ndim == 4 and split.images.shape[1:] == shape
    assert len(split.images) > 0 and split.images.max() <= pixel_max
    assert split.labels.dtype == np.int64 and split.labels.shape == (len(split.images),)
    assert split.labels.min() >= 0 and split.labels.max() < num_classes


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_on_a_fixture(name, tmp_path):
    if name not in DATASET_FIXTURES:
        pytest.fail(f"dataset {name!r} has no fixture in DATASET_FIXTURES")
    config, num_classes = DATASET_FIXTURES[name](tmp_path)
    assert config.dataset == name
    dataset = load_dataset(config)
    names = tuple(dataset.class_names)
    assert len(names) == dataset.num_classes == num_classes
    assert all(isinstance(c, str) and c for c in names) and len(set(names)) == len(names), names
    if isinstance(dataset, ImagePoolSource):
        _check_image_pool(dataset, config)
        return
    assert isinstance(dataset, SourceDataset), f"{name} loads a {type(dataset).__name__}"
    assert dataset.name == name  # pool fingerprints and reports use it
    shape = dataset.train.images.shape[1:]
    assert shape[2] in (1, 3)
    assert dataset.pixel_max > 0
    _check_split(dataset.train, num_classes, dataset.pixel_max, shape)
    _check_split(dataset.test, num_classes, dataset.pixel_max, shape)
    mean, std = dataset.channel_stats()
    assert len(mean) == len(std) == shape[2] and all(0 <= m <= 1 for m in mean) and all(s > 0 for s in std)
    assert isinstance(dataset.content_digest, str) and dataset.content_digest


def _check_image_pool(source: ImagePoolSource, config: DataConfig) -> None:
    """A listed image pool: roles and labels of its files, and every file decodes (what the Ray Data pass runs)."""
    from osal_ray.data.image_files import decode_file

    roles = {e.role for e in source.entries}
    assert roles == {"unlabeled", "labeled", "test"}
    for entry in source.entries:
        if entry.role == "unlabeled":
            assert entry.label is None
        elif entry.role == "labeled":
            assert entry.label in (*source.class_names, source.unknown_label)
        else:
            assert entry.label in source.class_names  # test images of other classes are left out
        decoded = decode_file(str(source.root), entry.path, source.image_size)
        assert "error" not in decoded, decoded
        assert decoded["image"].shape == (config.image_size, config.image_size, 3) and decoded["image"].dtype == np.uint8
    assert any(e.role == "labeled" and e.label == source.unknown_label for e in source.entries)
    assert not any(e.label == "bird" for e in source.entries)
