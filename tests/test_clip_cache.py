"""open_clip weights found in a Hugging Face cache laid out as huggingface_hub writes it, without network."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
from huggingface_hub import _CACHED_NO_EXIST

from osal_ray.clip import loading
from osal_ray.clip.loading import create_clipn, find_cached_pretrained, weights_file
from osal_ray.errors import InputError

ARCH, TAG = "ViT-B-16", "laion2b_s34b_b88k"  # hf_hub "laion/CLIP-ViT-B-16-laion2B-s34B-b88K/": the default names
REPO = "models--laion--CLIP-ViT-B-16-laion2B-s34B-b88K"
SAFE, BIN = "open_clip_model.safetensors", "open_clip_pytorch_model.bin"


def snapshot(cache: Path, sha: str, *files: str, main: bool = True) -> Path:
    """``cache``/models--ORG--NAME/snapshots/``sha`` holding ``files`` (refs/main -> ``sha`` when ``main``)."""
    repo = cache / REPO
    (repo / "snapshots" / sha).mkdir(parents=True, exist_ok=True)
    for name in files:
        (repo / "snapshots" / sha / name).write_bytes(b"weights")
    if main:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(sha)
    return repo / "snapshots" / sha


def no_exist(cache: Path, sha: str, name: str) -> None:
    """What a download that got a 404 for ``name`` at ``sha`` leaves behind."""
    (cache / REPO / ".no_exist" / sha).mkdir(parents=True, exist_ok=True)
    (cache / REPO / ".no_exist" / sha / name).touch()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_the_main_revision_is_found_through_huggingface_hub(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = loading.try_to_load_from_cache
    monkeypatch.setattr(loading, "try_to_load_from_cache", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    sha = "0123456789abcdef0123456789abcdef01234567"
    weights = snapshot(cache, sha, BIN) / BIN
    no_exist(cache, sha, SAFE)  # open_clip asks for the .safetensors first; the hub had none
    assert real("laion/CLIP-ViT-B-16-laion2B-s34B-b88K", SAFE, cache_dir=cache) is _CACHED_NO_EXIST
    assert find_cached_pretrained(ARCH, TAG) == str(weights)
    assert weights_file(ARCH, pretrained=TAG) == str(weights)  # what create_clipn and the digests read
    assert calls[0] == (("laion/CLIP-ViT-B-16-laion2B-s34B-b88K", SAFE), {"cache_dir": cache, "revision": None})


def test_safetensors_are_preferred_and_main_wins_over_other_snapshots(cache: Path) -> None:
    snapshot(cache, "aaaa", SAFE, BIN, main=False)
    main = snapshot(cache, "bbbb", SAFE, BIN)
    assert find_cached_pretrained(ARCH, TAG) == str(main / SAFE)


def test_a_snapshot_without_a_ref_is_found(cache: Path) -> None:
    snapshot(cache, "cccc", main=True)  # main points at a commit without the weights
    other = snapshot(cache, "dddd", BIN, main=False)  # downloaded by commit hash: no ref written
    assert find_cached_pretrained(ARCH, TAG) == str(other / BIN)


def test_hf_home_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    weights = snapshot(tmp_path / "home" / "hub", "eeee", BIN) / BIN
    assert find_cached_pretrained(ARCH, TAG) == str(weights)


def test_missing_weights_keep_the_clear_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("built before resolving weights"))
    snapshot(cache, "ffff", "config.json")  # the repo is cached, its weights are not
    no_exist(cache, "ffff", SAFE)
    no_exist(cache, "ffff", BIN)
    assert find_cached_pretrained(ARCH, TAG) is None
    assert weights_file(ARCH, pretrained=TAG) is None
    with pytest.raises(InputError) as info:
        create_clipn(ARCH, pretrained=TAG)
    message = str(info.value)
    assert info.value.field == "clip.checkpoint"
    assert f"open_clip weights {ARCH}/{TAG} are not in the local caches" in message
    assert str(cache / REPO) in message and "xmed-lab/CLIPN" in message
