"""Build a CLIPN and load its weights: a CLIPN checkpoint, or open_clip CLIP weights duplicated.

Where the weights come from is settled before the (expensive) architecture is built:

1. ``checkpoint``: a CLIPN checkpoint file holding both text towers (the CLIPN release,
   or :func:`save_clipn_checkpoint`);
2. ``pretrained``: an open_clip pretrained tag found in the local caches (or downloaded
   by open_clip when ``allow_download``), or a local open_clip weights file; the yes tower
   is duplicated into the no tower, which is therefore untrained;
3. otherwise an :class:`InputError` says what to download and where to put it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from huggingface_hub import try_to_load_from_cache
from open_clip import pretrained as oc_pretrained
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

from osal_ray.clip.model import CLIPN, NO_TOWER_NAMES
from osal_ray.errors import InputError

CLIPN_RELEASE = "https://github.com/xmed-lab/CLIPN (README, 'Model/log' links for ViT-B-16)"
# The tags the VLPure/CLIPN experiments start from, suggested in the "nothing found" message.
SUGGESTED_TAGS: dict[str, str] = {"ViT-B-16": "laion2b_s34b_b88k", "ViT-B-32": "laion2b_s34b_b79k"}
UNTRAINED_NO_TOWER = (
    "the no tower and no-prompts are untrained (the yes tower copied, prompts zero): CLIPN OOD "
    "scores are uninformed until a CLIPN checkpoint is given as clip.checkpoint"
)


@dataclass(frozen=True)
class LoadReport:
    """What a load did: the weights' source and the keys that did not line up."""

    source: str
    missing_keys: list[str]
    unexpected_keys: list[str]
    warnings: list[str]


@dataclass(frozen=True)
class _Source:
    kind: str  # "checkpoint" or "pretrained"
    path: str
    label: str
    tag_cfg: dict[str, Any]


def create_clipn(
    model_name: str,
    *,
    checkpoint: str | None = None,
    pretrained: str | None = None,
    model_config: dict | None = None,
    device: str = "cpu",
    allow_download: bool = False,
) -> tuple[CLIPN, LoadReport]:
    """Build a CLIPN for ``model_name`` (or the custom ``model_config``) and load its weights.

    ``checkpoint`` (a CLIPN file) wins over ``pretrained`` (an open_clip tag or file); when
    the checkpoint file is missing but ``pretrained`` is reachable, the latter is used and
    the report says so. A pretrained tag is looked up in the local caches only, unless
    ``allow_download`` lets open_clip fetch it (offline, huggingface_hub retries for about
    a minute before failing). The model is returned in eval mode on ``device``.
    """
    notes: list[str] = []
    arch, source = _locate_weights(model_name, checkpoint, pretrained, model_config, allow_download, notes)
    field = "clip.checkpoint" if source.kind == "checkpoint" else "clip.pretrained"
    state = read_state_dict(source.path, field)
    if source.kind == "pretrained":
        state = clipn_state_dict_from_clip(state)

    preprocess = {k: source.tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in source.tag_cfg}
    clip = open_clip.create_model(
        arch,
        pretrained=None,
        device="cpu",
        force_quick_gelu=bool(source.tag_cfg.get("quick_gelu", False)),
        force_preprocess_cfg=preprocess or None,
    )
    model = CLIPN(clip, model_name=arch)
    missing, unexpected = load_clipn_state_dict(model, state, field, allowed_missing=_allowed_missing(source))

    if source.kind == "pretrained":
        notes.append(UNTRAINED_NO_TOWER)
    if unexpected:
        notes.append(f"{len(unexpected)} checkpoint tensors match no model parameter and were ignored")
    for note in notes:
        warnings.warn(f"CLIPN {model_name}: {note}", UserWarning, stacklevel=2)
    model = model.to(device).eval()
    return model, LoadReport(source.label, missing, unexpected, notes)


def check_clipn_weights(
    model_name: str,
    *,
    checkpoint: str | None = None,
    pretrained: str | None = None,
    model_config: dict | None = None,
    allow_download: bool = False,
) -> str:
    """Find and check the weights ``create_clipn`` would load, before any Ray work starts.

    Raises the same InputError as loading would (nothing reachable: what to download and where; a
    pickle that is not plain tensors; shapes that do not match the architecture; model tensors the
    file leaves uninitialised), in one line. The architecture is built on the meta device (no
    memory, no weights) and the file is memory-mapped where torch can, so this costs little even
    for a ViT-B checkpoint. Returns a label of the source.
    """
    arch, source = _locate_weights(model_name, checkpoint, pretrained, model_config, allow_download, [])
    field = "clip.checkpoint" if source.kind == "checkpoint" else "clip.pretrained"
    state = read_state_dict(source.path, field, mmap=True)
    if source.kind == "pretrained":
        state = clipn_state_dict_from_clip(state)
    with torch.device("meta"):
        model = CLIPN(open_clip.create_model(arch, pretrained=None, device="meta",
                                             force_quick_gelu=bool(source.tag_cfg.get("quick_gelu", False))), model_name=arch)
    check_clipn_state_dict(model, state, field, _allowed_missing(source))
    return source.label


def weights_digest(path: str) -> str:
    """SHA-256 of a weights file's bytes (cached per path, size and modification time in this process):
    caches of CLIP embeddings are keyed by what the weights are, not by where they live."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()[:16]
    return _DIGESTS[key]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def weights_file(model_name: str, *, checkpoint: str | None = None, pretrained: str | None = None,
                 model_config: dict | None = None) -> str | None:
    """The file ``create_clipn`` would read (None when nothing is reachable)."""
    try:
        return _locate_weights(model_name, checkpoint, pretrained, model_config, False, [])[1].path
    except InputError:
        return None


def _allowed_missing(source: _Source) -> tuple[str, ...]:
    """Model tensors a source may leave at their initial values: CLIP weights have no no-prompts
    (CLIPN starts them at zero); a CLIPN checkpoint must hold everything."""
    return ("prompt_no",) if source.kind == "pretrained" else ()


def _locate_weights(model_name: str, checkpoint: str | None, pretrained: str | None, model_config: dict | None,
                    allow_download: bool, notes: list[str]) -> tuple[str, _Source]:
    """The open_clip architecture to build and where its weights are (InputError when nowhere)."""
    if ":" in model_name:
        raise InputError("clip.model_name", f"{model_name!r}: hf-hub:/local-dir: names are unsupported; use clip.model_config")
    arch = register_model_config(model_name, model_config) if model_config is not None else model_name
    if open_clip.get_model_config(arch) is None:
        raise InputError("clip.model_name", f"unknown open_clip architecture {model_name!r}")
    source = _resolve_source(model_name, arch, checkpoint, pretrained, notes, custom=model_config is not None, download=allow_download)
    return arch, source


def clipn_tokenizer(model: CLIPN) -> Any:
    """The open_clip tokenizer for ``model``'s architecture (the bundled BPE vocabulary works offline)."""
    if model.model_name is None:
        return open_clip.SimpleTokenizer(context_length=model.context_length)
    return open_clip.get_tokenizer(model.model_name, context_length=model.context_length)


def register_model_config(model_name: str, model_config: dict) -> str:
    """Register a custom open_clip architecture dict and return the private name it lives under.

    open_clip only registers configs from JSON files (``add_model_config``), so the dict is
    written to a temporary file for the registration; the registry keeps the parsed dict.
    The name hashes the config, so registering the same dict twice is a no-op.
    """
    if not isinstance(model_config, dict) or not all(
        isinstance(model_config.get(k), expected)
        for k, expected in (("embed_dim", int), ("vision_cfg", dict), ("text_cfg", dict))
    ):
        raise InputError("clip.model_config", "needs embed_dim (int), vision_cfg (dict) and text_cfg (dict)")
    custom_text = model_config.get("custom_text") or "hf_model_name" in model_config["text_cfg"]
    if custom_text or "multimodal_cfg" in model_config:
        raise InputError("clip.model_config", "CLIPN needs the built-in open_clip text tower (no custom/HF text)")
    try:
        payload = json.dumps(model_config, sort_keys=True)
    except TypeError as error:
        raise InputError("clip.model_config", f"must be JSON-serialisable: {error}") from error
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", model_name).strip("-") or "custom"
    name = f"osal-{stem}-{hashlib.sha1(payload.encode()).hexdigest()[:10]}"
    if name not in open_clip.list_models():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.json"
            path.write_text(payload)
            open_clip.add_model_config(path)
    return name


def read_state_dict(path: str, field: str, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Load a plain-tensor state dict (weights_only), unwrapping ``state_dict``/``model`` and ``module.``.

    ``mmap``: map the file instead of reading it where torch can (zip-format checkpoints).
    """
    if str(path).endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise InputError(field, f"{path} is a .safetensors file; install safetensors to read it") from error
        obj: Any = load_file(str(path), device="cpu")
    else:
        try:
            obj = _torch_load(path, mmap)
        except pickle.UnpicklingError as error:
            detail = str(error).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
            raise InputError(
                field,
                f"{path} is not a plain-tensor checkpoint: torch.load(weights_only=True) refused it ({detail}); "
                "re-save it as a dict of tensors",
            ) from error
        except Exception as error:
            raise InputError(field, f"{path} could not be read as a torch checkpoint: {error}") from error
    if isinstance(obj, torch.jit.ScriptModule):  # OpenAI's TorchScript releases
        extras = ("input_resolution", "context_length", "vocab_size")
        obj = {k: v for k, v in obj.state_dict().items() if k not in extras}
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not obj:
        raise InputError(field, f"{path} holds no state dict (a mapping of names to tensors)")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(field, f"{path} is not a plain-tensor checkpoint: non-tensor entries {bad[:3]}")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


def _torch_load(path: str, mmap: bool) -> Any:
    if mmap:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error).lower() and "zip" not in str(error).lower():
                raise
    return torch.load(path, map_location="cpu", weights_only=True)


def clipn_state_dict_from_clip(clip_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPN state dict from a CLIP one: the yes text tower duplicated into the no tower.

    Tensors are shared with ``clip_state``, not copied; ``prompt_no`` is absent (CLIPN starts
    its no-prompts at zero).
    """
    if any(k.startswith(no) for k in clip_state for no in NO_TOWER_NAMES.values()):
        raise InputError("clip.pretrained", "already holds a CLIPN no tower; give this file as clip.checkpoint")
    state = dict(clip_state)
    for key, value in clip_state.items():
        for yes, no in NO_TOWER_NAMES.items():
            if key == yes or key.startswith(yes + "."):
                state[no + key[len(yes) :]] = value
    return state


def check_clipn_state_dict(model: CLIPN, state: dict[str, torch.Tensor], field: str,
                           allowed_missing: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """Refuse a state dict with shapes other than ``model``'s, or that leaves model tensors
    uninitialised (other than ``allowed_missing`` prefixes); return (missing, unexpected) keys."""
    own = {k: v.shape for k, v in model.state_dict().items()}
    scale = state.get("logit_scale")
    if scale is not None and "logit_scale" in own and scale.numel() == own["logit_scale"].numel():
        state["logit_scale"] = scale.reshape(own["logit_scale"])  # scalar vs [1] across open_clip versions
    mismatched = [f"{k}: file {list(v.shape)} vs model {list(own[k])}" for k, v in state.items() if k in own and v.shape != own[k]]
    if mismatched:
        raise InputError(
            field,
            f"tensor shapes do not match the {model.model_name} architecture "
            f"({len(mismatched)} keys; first: {'; '.join(mismatched[:3])})",
        )
    missing = [k for k in own if k not in state]
    unexplained = [k for k in missing if not k.startswith(allowed_missing)] if allowed_missing else missing
    if unexplained:
        raise InputError(
            field,
            f"the file leaves {len(unexplained)} of the {model.model_name} model's {len(own)} tensors uninitialised "
            f"(e.g. {', '.join(unexplained[:3])}): it is not a checkpoint of this architecture",
        )
    return missing, [k for k in state if k not in own]


def load_clipn_state_dict(model: CLIPN, state: dict[str, torch.Tensor], field: str,
                          allowed_missing: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """Check (``check_clipn_state_dict``), then load non-strictly; return (missing_keys, unexpected_keys)."""
    state = dict(state)
    check_clipn_state_dict(model, state, field, allowed_missing)
    result = model.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)


def save_clipn_checkpoint(model: CLIPN, path: str | os.PathLike, *, module_prefix: bool = True) -> Path:
    """Write ``model`` as a training-style checkpoint: ``{"epoch", "name", "state_dict"}``.

    With ``module_prefix`` the keys carry the ``module.`` prefix a DistributedDataParallel
    run leaves, as in the CLIPN release.
    """
    prefix = "module." if module_prefix else ""
    state = {prefix + k: v.detach().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    torch.save({"epoch": 0, "name": model.model_name or "clipn", "state_dict": state}, path)
    return path


def find_cached_pretrained(model_name: str, tag: str) -> str | None:
    """The local file for an open_clip pretrained tag, if a previous download left one; no network."""
    cfg = oc_pretrained.get_pretrained_cfg(model_name, tag)
    if not cfg:
        return None
    if cfg.get("file") and os.path.isfile(cfg["file"]):
        return cfg["file"]
    hub = cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        found = find_in_hf_cache(repo_id, names)
        if found is not None:
            return found
    url = cfg.get("url", "")
    if url:
        target = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if target.is_file():
            return str(target)
    return None


def find_in_hf_cache(repo_id: str, names: list[str]) -> str | None:
    """The first of ``names`` in the Hugging Face cache of model ``repo_id``: at the revision ``main``
    points to, else at any other cached commit (a download by commit hash writes no ref). No network."""
    cache = hf_hub_cache_dir()
    for revision in [None, *_cached_commits(repo_id)]:
        for name in names:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache, revision=revision)
            if isinstance(found, str):
                return found
            # None (not cached) and _CACHED_NO_EXIST (a download found no such file there) both mean: not here.
    return None


def hf_hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads (HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME/hub, or
    $XDG_CACHE_HOME/huggingface/hub), resolved as ``huggingface_hub.constants`` does but when called:
    the library reads the environment once, at import."""
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if hub:
        return Path(os.path.expandvars(os.path.expanduser(hub)))
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def _hf_repo_dir(repo_id: str) -> Path:
    return hf_hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def _cached_commits(repo_id: str) -> list[str]:
    snapshots = _hf_repo_dir(repo_id) / "snapshots"
    return sorted(p.name for p in snapshots.iterdir() if p.is_dir()) if snapshots.is_dir() else []


def _resolve_source(
    model_name: str,
    arch: str,
    checkpoint: str | None,
    pretrained: str | None,
    notes: list[str],
    custom: bool,
    download: bool,
) -> _Source:
    reasons: list[str] = []
    if checkpoint:
        if os.path.isfile(checkpoint):
            return _Source("checkpoint", checkpoint, f"checkpoint:{checkpoint}", {})
        reasons.append(f"clip.checkpoint {checkpoint!r} is not a file")
    if pretrained:
        found = _resolve_pretrained(arch, pretrained, reasons, download)
        if found is not None:
            if reasons:
                notes.append(f"{reasons[0]}; loaded clip.pretrained instead")
            return found
    if not reasons:
        reasons.append("neither clip.checkpoint nor clip.pretrained is set")
    raise InputError("clip.checkpoint", _download_help(model_name, arch, reasons, custom))


def _resolve_pretrained(arch: str, pretrained: str, reasons: list[str], download: bool) -> _Source | None:
    if os.path.isfile(pretrained):
        return _Source("pretrained", pretrained, f"pretrained-file:{pretrained}", {})
    cfg = oc_pretrained.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        tags = oc_pretrained.list_pretrained_tags_by_model(arch)
        reasons.append(f"clip.pretrained {pretrained!r} is neither a file nor an open_clip tag of {arch} ({tags})")
        return None
    path = find_cached_pretrained(arch, pretrained)
    if path is None and not download:
        reasons.append(
            f"open_clip weights {arch}/{pretrained} are not in the local caches "
            "(downloads are off; create_clipn(allow_download=True) lets open_clip fetch them)"
        )
        return None
    if path is None:
        try:
            path = oc_pretrained.download_pretrained(cfg) or None
        except Exception as error:  # no network, no huggingface_hub, ...: all mean "not reachable"
            reasons.append(f"open_clip weights {arch}/{pretrained} are not cached and the download failed ({error})")
            return None
    if path is None:
        reasons.append(f"open_clip weights {arch}/{pretrained} are not cached")
        return None
    return _Source("pretrained", path, f"pretrained:{pretrained} ({path})", cfg)


def _download_help(model_name: str, arch: str, reasons: list[str], custom: bool) -> str:
    message = f"no {model_name} weights found ({'; '.join(reasons)}). "
    if custom:
        return message + (
            "A custom architecture needs a CLIPN checkpoint file (clip.checkpoint) "
            "or an open_clip weights file (clip.pretrained)."
        )
    message += (
        f"Download the CLIPN {model_name} checkpoint from the CLIPN authors' release, {CLIPN_RELEASE}, "
        "and give its path as clip.checkpoint"
    )
    tag = SUGGESTED_TAGS.get(arch) or next(iter(oc_pretrained.list_pretrained_tags_by_model(arch)), None)
    cfg = oc_pretrained.get_pretrained_cfg(arch, tag) if tag else {}
    if not cfg:
        return message + "."
    where = []
    if cfg.get("hf_hub"):
        repo_id, filename = os.path.split(cfg["hf_hub"])
        where.append(
            f"the Hugging Face cache {_hf_repo_dir(repo_id)}"
            f"/snapshots/<revision>/{filename or HF_WEIGHTS_NAME} (huggingface.co/{repo_id})"
        )
    if cfg.get("url"):
        where.append(f"~/.cache/clip/{os.path.basename(cfg['url'])} ({cfg['url']})")
    return message + (
        f"; or place the open_clip {arch} {tag!r} weights in {' or '.join(where)} and set clip.pretrained={tag!r}, "
        "or give that weights file's path as clip.pretrained (the no tower then starts untrained)."
    )
