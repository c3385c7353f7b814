"""Network checkpoints: a plain dict of metadata and tensors, loaded with ``weights_only=True``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from osal_ray import storage
from osal_ray.config import KeepCheckpoints, allowed
from osal_ray.errors import InputError
from osal_ray.models import create_model
from osal_ray.models.heads import attach_head

FORMAT = "osal_ray.network/1"
MODEL_FILE = "model.pt"
# train.keep_checkpoints: "last" keeps what a resume needs (the run state's checkpoints), "all" every round's.
KEEP_CHECKPOINTS = allowed(KeepCheckpoints)


@dataclass(frozen=True)
class NetworkSpec:
    """Everything needed to rebuild a network: registry name, output count, input, kwargs, head."""

    model: str
    num_outputs: int
    in_channels: int
    image_size: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    input: str = "image"
    head: str | None = None
    head_kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> torch.nn.Module:
        backbone = create_model(self.model, self.num_outputs, self.in_channels, self.image_size, **self.kwargs)
        if self.head is None:
            return backbone
        sample_shape = (self.in_channels, self.image_size, self.image_size) if self.input == "image" else (self.in_channels,)
        return attach_head(self.head, backbone, sample_shape=sample_shape, **self.head_kwargs)


def save_network(model: torch.nn.Module, spec: NetworkSpec, path: Path) -> None:
    """Write the network's weights and spec atomically to ``path``."""
    module = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    storage.write_file(path, lambda tmp: torch.save({"format": FORMAT, "spec": asdict(spec), "state_dict": state}, tmp))


def load_network(path: str | Path, expected: NetworkSpec | None = None, field_name: str = "checkpoint",
                 into: torch.nn.Module | None = None) -> tuple[torch.nn.Module, NetworkSpec]:
    """Load a checkpoint written by ``save_network``; refuse anything else with a clear error.

    A directory is taken to hold ``model.pt``. With ``expected``, a checkpoint of another
    architecture or output count is refused before any weight is copied. ``into``: load the
    weights into this model (built from the same spec) instead of building a new one.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise InputError(field_name, f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise InputError(field_name, f"{path} is not a loadable weights-only checkpoint: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(field_name, f"{path} is not an osal_ray network checkpoint (format {FORMAT!r} expected)")
    try:
        spec = NetworkSpec(**payload["spec"])
    except TypeError as exc:
        raise InputError(field_name, f"{path}: malformed network spec: {exc}") from None
    if expected is not None and spec != expected:
        raise InputError(field_name, f"{path} holds {spec}, but {expected} is configured")
    model = into if into is not None else spec.build()
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise InputError(field_name, f"{path}: no state_dict")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise InputError(
            field_name,
            f"{path} does not fit {spec.model}: missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}",
        )
    model.load_state_dict(state)
    return model, spec


def load_network_anywhere(location: str, expected: NetworkSpec | None = None, field_name: str = "checkpoint",
                          into: torch.nn.Module | None = None) -> tuple[torch.nn.Module, NetworkSpec]:
    """``load_network`` for a local path or any URI Ray Train's Checkpoint understands (s3://, ...)."""
    if not storage.is_uri(location):
        return load_network(location, expected, field_name, into)
    from ray.train import Checkpoint

    with Checkpoint(location).as_directory() as folder:
        return load_network(folder, expected, field_name, into)


def prune_checkpoints(storage_root: str | Path, keep: Iterable[str], prefix: str, staging: str | Path | None = None,
                      log: Callable[[str], None] | None = None) -> list[str]:
    """Delete the training runs ``<storage_root>/<prefix>*`` that hold none of the ``keep`` checkpoints.

    ``storage_root`` is where ``fit_network`` names its runs (a path or a URI); ``keep`` the
    checkpoint locations a saved run state refers to (each lies in a run directory directly under
    ``storage_root``); ``prefix`` names one trajectory's runs, so no other trajectory's are touched.
    A whole run directory goes: the checkpoint and whatever Ray Train keeps beside it. ``staging``:
    the local folder in-process runs wrote before uploading to a URI; every staged copy of the
    trajectory's runs goes (the uploaded one is what the state refers to).

    Call it only once the state that no longer refers to the other runs is durably saved. If some
    ``keep`` location is not a run under ``storage_root`` (the storage moved), nothing is deleted.
    A failed deletion is reported through ``log`` (if given) and left for the next call. Returns
    the names of the run directories deleted from ``storage_root``.
    """
    import pyarrow.fs as pafs

    if not prefix:
        raise ValueError("prune_checkpoints needs the prefix of one trajectory's runs")
    say = log or (lambda _message: None)
    filesystem, root = storage.resolve(storage_root)
    root = root.rstrip("/")
    kept = set()
    for location in keep:
        _, path = storage.resolve(location)
        relative = path[len(root) + 1:] if path.startswith(root + "/") else ""
        name = relative.split("/", 1)[0]
        if not name:
            say(f"checkpoints kept: {location} is not under {storage_root}, so no run of {prefix}* is deleted there")
            return []
        kept.add(name)
    deleted = []
    for name in _runs(filesystem, root, prefix):
        if name in kept:
            continue
        try:
            filesystem.delete_dir(f"{root}/{name}")
            deleted.append(name)
        except OSError as exc:
            say(f"could not delete the old checkpoint run {storage.join(storage_root, name)}: {exc}; it is retried next round")
    if staging is not None and storage.is_uri(storage_root):
        local = pafs.LocalFileSystem()
        folder = str(Path(staging).resolve())
        for name in _runs(local, folder, prefix):
            try:
                local.delete_dir(f"{folder}/{name}")
            except OSError as exc:
                say(f"could not delete the staged checkpoint {folder}/{name}: {exc}")
    return deleted


def _runs(filesystem, root: str, prefix: str) -> list[str]:
    """The names of the directories directly under ``root`` that start with ``prefix`` (none if ``root`` is absent)."""
    import pyarrow.fs as pafs

    if filesystem.get_file_info(root).type != pafs.FileType.Directory:
        return []
    infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=False))
    names = (info.path.rstrip("/").rsplit("/", 1)[-1] for info in infos if info.type == pafs.FileType.Directory)
    return sorted(name for name in names if name.startswith(prefix))
