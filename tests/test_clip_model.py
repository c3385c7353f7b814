"""CLIPN on a tiny random open_clip architecture: towers, prompts and the weight loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from osal_ray.clip.loading import (
    LoadReport,
    check_clipn_weights,
    clipn_state_dict_from_clip,
    clipn_tokenizer,
    create_clipn,
    find_cached_pretrained,
    register_model_config,
    save_clipn_checkpoint,
)
from osal_ray.clip.model import CLIPN
from osal_ray.clip.preprocess import clip_image_settings
from osal_ray.clip.prompts import build_prompts, text_embeddings
from osal_ray.errors import InputError

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CLASSES = ["cat", "dog", "fire_truck"]
NO_KEYS = (
    "transformer_no.",
    "token_embedding_no.weight",
    "positional_embedding_no",
    "ln_final_no.",
    "text_projection_no",
    "prompt_no",
)
YES_TO_NO = {
    "transformer.resblocks.0.attn.in_proj_weight": "transformer_no.resblocks.0.attn.in_proj_weight",
    "transformer.resblocks.1.mlp.c_fc.bias": "transformer_no.resblocks.1.mlp.c_fc.bias",
    "token_embedding.weight": "token_embedding_no.weight",
    "positional_embedding": "positional_embedding_no",
    "ln_final.weight": "ln_final_no.weight",
    "text_projection": "text_projection_no",
}


def tiny_clipn(seed: int = 0) -> CLIPN:
    torch.manual_seed(seed)
    name = register_model_config("tiny", TINY)
    return CLIPN(open_clip.create_model(name), model_name=name).eval()


def perturb_no_tower(model: CLIPN, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.startswith(NO_KEYS):
                tensor.add_(0.05 * torch.randn(tensor.shape, generator=generator))


@pytest.fixture(scope="module")
def model() -> CLIPN:
    return tiny_clipn()


@pytest.fixture(scope="module")
def tokens(model: CLIPN) -> torch.Tensor:
    return clipn_tokenizer(model)(["a photo of a cat.", "a dog", "no fire truck here"])


def test_state_dict_names_the_no_tower(model: CLIPN) -> None:
    keys = set(model.state_dict())
    for name in (*YES_TO_NO.values(), "prompt_no", "ln_final_no.bias"):
        assert name in keys
    assert any(k.startswith("transformer_no.resblocks.1.") for k in keys)
    assert "visual.conv1.weight" in keys and "token_embedding.weight" in keys
    assert model.prompt_no.shape == (16, 77, 64)
    assert torch.count_nonzero(model.prompt_no) == 0


def test_encoders_shapes_and_normalisation(model: CLIPN, tokens: torch.Tensor) -> None:
    with torch.no_grad():
        image = model.encode_image(torch.randn(2, 3, 32, 32))
        yes = model.encode_text(tokens)
        no = model.encode_text_no(tokens)
        raw = model.encode_text_no(tokens, normalize=False)
    assert image.shape == (2, 32) and yes.shape == (3, 32) and no.shape == (3, 32)
    for emb in (image, yes, no):
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(emb.shape[0]))
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3))
    assert model.scale == pytest.approx(1 / 0.07, rel=1e-5)


def test_untouched_no_tower_pools_like_the_yes_tower(tokens: torch.Tensor) -> None:
    clipn = tiny_clipn()
    with torch.no_grad():
        torch.testing.assert_close(clipn.encode_text_no(tokens), clipn.encode_text(tokens))
        perturb_no_tower(clipn)
        assert not torch.allclose(clipn.encode_text_no(tokens), clipn.encode_text(tokens))


def test_no_prompt_mean_is_added_at_evaluation(tokens: torch.Tensor) -> None:
    clipn = tiny_clipn()
    prompts = 0.1 * torch.randn(clipn.prompt_no.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        yes_before, no_before = clipn.encode_text(tokens), clipn.encode_text_no(tokens)
        clipn.prompt_no.copy_(prompts)
        yes_after, no_mean = clipn.encode_text(tokens), clipn.encode_text_no(tokens)
        no_second = clipn.encode_text_no(tokens, prompt_index=2)
        torch.testing.assert_close(yes_after, yes_before)
        assert not torch.allclose(no_mean, no_before)
        clipn.prompt_no.copy_(prompts.mean(dim=0, keepdim=True).expand_as(prompts))
        torch.testing.assert_close(clipn.encode_text_no(tokens, prompt_index=0), no_mean)
        clipn.prompt_no.copy_(prompts[2:3].expand_as(prompts))
        torch.testing.assert_close(clipn.encode_text_no(tokens), no_second)


def test_prompts_with_and_without_domain() -> None:
    plain = build_prompts(CLASSES)
    aware = build_prompts(CLASSES, domain="sketch")
    assert len(plain) == 3 and 15 <= len(plain[0]) <= 25
    assert "a photo of a fire truck." in plain[2]
    assert "a photo of a sketch fire truck." in aware[2]
    assert build_prompts(["cat"], templates=["{} here"]) == [["cat here"]]
    with pytest.raises(InputError):
        build_prompts(CLASSES, templates=["no placeholder"])


def test_text_embeddings_per_class(model: CLIPN) -> None:
    tokenizer = clipn_tokenizer(model)
    yes, no = text_embeddings(model, tokenizer, CLASSES, batch_size=32)
    yes_d, _ = text_embeddings(model, tokenizer, CLASSES, domain="painting")
    for emb in (yes, no, yes_d):
        assert emb.shape == (3, 32) and emb.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(yes, yes_d)
    # the ensemble of a single template is that prompt's own embedding
    single, _ = text_embeddings(model, tokenizer, ["cat"], templates=["a photo of a {}."])
    with torch.no_grad():
        direct = model.encode_text(tokenizer(["a photo of a cat."])).numpy()
    np.testing.assert_allclose(single, direct, atol=1e-6)


def test_clip_image_settings(model: CLIPN) -> None:
    size, mean, std = clip_image_settings(model)
    assert size == 32
    assert mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN) and std == pytest.approx(open_clip.OPENAI_DATASET_STD)


def _write_clipn(tmp_path: Path) -> tuple[CLIPN, Path]:
    source = tiny_clipn(seed=5)
    perturb_no_tower(source, seed=6)
    return source, save_clipn_checkpoint(source, tmp_path / "clipn.pt")


def test_clipn_checkpoint_round_trips(tmp_path: Path) -> None:
    source, path = _write_clipn(tmp_path)
    raw = torch.load(path, weights_only=True)
    assert all(k.startswith("module.") for k in raw["state_dict"])
    loaded, report = create_clipn("tiny", model_config=TINY, checkpoint=str(path))
    assert isinstance(report, LoadReport) and report.source == f"checkpoint:{path}"
    assert report.missing_keys == [] and report.unexpected_keys == [] and report.warnings == []
    expected = source.state_dict()
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[key]), key
    assert not loaded.training


def test_unexpected_keys_are_reported_and_missing_ones_refused(tmp_path: Path) -> None:
    _, path = _write_clipn(tmp_path)
    raw = torch.load(path, weights_only=True)
    raw["state_dict"]["module.extra_head.weight"] = torch.zeros(3)
    torch.save(raw, path)
    with pytest.warns(UserWarning, match="match no model parameter"):
        _, report = create_clipn("tiny", model_config=TINY, checkpoint=str(path))
    assert report.missing_keys == [] and report.unexpected_keys == ["extra_head.weight"]
    del raw["state_dict"]["module.ln_final_no.bias"]
    torch.save(raw, path)
    for check in (create_clipn, check_clipn_weights):  # at load time, and before Ray
        with pytest.raises(InputError, match=r"leaves 1 of the .* tensors uninitialised \(e.g. ln_final_no.bias\)"):
            check("tiny", model_config=TINY, checkpoint=str(path))


def test_a_checkpoint_of_another_model_is_refused_before_ray(tmp_path: Path) -> None:
    """A small network's state_dict once ran for minutes with a randomly initialised CLIPN."""
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)).state_dict(), tmp_path / "other.pt")
    with pytest.raises(InputError, match="uninitialised"):
        check_clipn_weights("tiny", model_config=TINY, checkpoint=str(tmp_path / "other.pt"))
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputError, match="not a plain-tensor checkpoint|could not be read as a torch checkpoint"):
        check_clipn_weights("tiny", model_config=TINY, checkpoint=str(tmp_path / "noise.pt"))
    _, path = _write_clipn(tmp_path)
    assert check_clipn_weights("tiny", model_config=TINY, checkpoint=str(path)).startswith("checkpoint:")


def test_model_wrapper_without_prefix_loads(tmp_path: Path) -> None:
    source = tiny_clipn(seed=7)
    torch.save({"model": source.state_dict()}, tmp_path / "plain.pt")
    loaded, report = create_clipn("tiny", model_config=TINY, checkpoint=str(tmp_path / "plain.pt"))
    assert report.missing_keys == []
    assert torch.equal(loaded.prompt_no, source.prompt_no)
    assert torch.equal(loaded.visual.conv1.weight, source.visual.conv1.weight)


def test_clip_weights_as_pretrained_duplicate_the_yes_tower(tmp_path: Path) -> None:
    torch.manual_seed(11)
    clip = open_clip.create_model(register_model_config("tiny", TINY))
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    with pytest.warns(UserWarning, match="untrained"):
        loaded, report = create_clipn("tiny", model_config=TINY, pretrained=str(tmp_path / "clip.pt"))
    assert report.source.startswith("pretrained-file:")
    assert report.missing_keys == ["prompt_no"] and report.unexpected_keys == []
    assert any("untrained" in w for w in report.warnings)
    state, clip_state = loaded.state_dict(), clip.state_dict()
    for key, tensor in clip_state.items():
        assert torch.equal(state[key], tensor), key
    for yes, no in YES_TO_NO.items():
        assert torch.equal(state[no], clip_state[yes]), no


def test_duplication_refuses_a_clipn_state() -> None:
    with pytest.raises(InputError, match="clip.checkpoint"):
        clipn_state_dict_from_clip(tiny_clipn().state_dict())


def test_wrong_shapes_are_refused_by_name(tmp_path: Path) -> None:
    _, path = _write_clipn(tmp_path)
    raw = torch.load(path, weights_only=True)
    raw["state_dict"]["module.text_projection_no"] = torch.zeros(5, 5)
    torch.save(raw, path)
    with pytest.raises(InputError, match=r"text_projection_no: file \[5, 5\] vs model \[64, 32\]") as info:
        create_clipn("tiny", model_config=TINY, checkpoint=str(path))
    assert info.value.field == "clip.checkpoint"


class NotATensor:
    pass


def test_non_tensor_pickles_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": tiny_clipn().state_dict(), "extra": NotATensor()}, path)
    with pytest.raises(InputError, match="not a plain-tensor checkpoint"):
        create_clipn("tiny", model_config=TINY, checkpoint=str(path))


def test_missing_checkpoint_falls_back_to_pretrained_with_a_note(tmp_path: Path) -> None:
    torch.save(open_clip.create_model(register_model_config("tiny", TINY)).state_dict(), tmp_path / "clip.pt")
    with pytest.warns(UserWarning):
        _, report = create_clipn(
            "tiny", model_config=TINY, checkpoint=str(tmp_path / "nope.pt"), pretrained=str(tmp_path / "clip.pt")
        )
    assert "nope.pt" in report.warnings[0]


def test_nothing_reachable_says_what_to_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("built before resolving weights"))
    for kwargs in ({}, {"checkpoint": str(tmp_path / "missing.pt"), "pretrained": "laion2b_s34b_b88k"}):
        with pytest.raises(InputError) as info:
            create_clipn("ViT-B-16", **kwargs)
        message = str(info.value)
        assert info.value.field == "clip.checkpoint"
        assert "xmed-lab/CLIPN" in message and "clip.checkpoint" in message
        assert "laion2b_s34b_b88k" in message and "clip.pretrained" in message
        assert str(tmp_path / "hub" / "models--laion--CLIP-ViT-B-16-laion2B-s34B-b88K") in message
    with pytest.raises(InputError, match="tiny"):
        create_clipn("tiny", model_config=TINY)


def test_cached_pretrained_is_found_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert find_cached_pretrained("ViT-B-16", "laion2b_s34b_b88k") is None
    repo = tmp_path / "models--laion--CLIP-ViT-B-16-laion2B-s34B-b88K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    weights = repo / "snapshots" / "abc123" / "open_clip_pytorch_model.bin"
    weights.write_bytes(b"")
    assert find_cached_pretrained("ViT-B-16", "laion2b_s34b_b88k") == str(weights)
