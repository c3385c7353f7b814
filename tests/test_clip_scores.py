"""CLIPN/VLPure scores against hand computations, and the batched image preprocessing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from osal_ray.clip.preprocess import preprocess_batch
from osal_ray.clip.scores import (
    atd_scores,
    class_mean_embeddings,
    clipn_probabilities,
    ctw_scores,
    tune_scale,
    visual_weights,
    vlpure_decision,
)
from osal_ray.errors import InputError

COS_YES = np.array([[0.3, 0.1], [0.2, 0.25]])
COS_NO = np.array([[0.2, 0.4], [0.1, 0.0]])


def _sig(z: float) -> float:
    return math.exp(z) / (math.exp(z) + 1.0)


def _hand_probabilities(cy: list[float], cn: list[float], s: float) -> tuple[list[float], list[float]]:
    denom = sum(math.exp(s * c) for c in cy)
    p_class = [math.exp(s * c) / denom for c in cy]
    p_yes = [math.exp(s * y) / (math.exp(s * y) + math.exp(s * n)) for y, n in zip(cy, cn)]
    return p_class, p_yes


def test_probabilities_and_atd_match_hand_computation() -> None:
    s = 10.0
    p_class, p_yes = clipn_probabilities(COS_YES, COS_NO, s)
    p_id, p_ood = atd_scores(COS_YES, COS_NO, s)
    # sample 0 written out: softmax of (3, 1) and yes-vs-no of (3 vs 2) and (1 vs 4)
    e = math.exp
    assert p_class[0, 0] == pytest.approx(e(3) / (e(3) + e(1)))
    assert p_yes[0, 0] == pytest.approx(e(3) / (e(3) + e(2)))
    assert p_yes[0, 1] == pytest.approx(e(1) / (e(1) + e(4)))
    for n in range(2):
        hc, hy = _hand_probabilities(list(COS_YES[n]), list(COS_NO[n]), s)
        np.testing.assert_allclose(p_class[n], hc, rtol=1e-12)
        np.testing.assert_allclose(p_yes[n], hy, rtol=1e-12)
        hand_id = [hy[c] * hc[c] for c in range(2)]
        np.testing.assert_allclose(p_id[n], hand_id, rtol=1e-12)
        assert p_ood[n] == pytest.approx(1.0 - sum(hand_id))


def test_probabilities_are_stable_for_huge_scales() -> None:
    p_class, p_yes = clipn_probabilities(COS_YES, COS_NO, 1e5)
    assert np.all(np.isfinite(p_class)) and np.all(np.isfinite(p_yes))
    np.testing.assert_allclose(p_yes[0], [1.0, 0.0])


def test_ctw_takes_p_yes_of_the_best_yes_class() -> None:
    s = 10.0
    got = ctw_scores(COS_YES, COS_NO, s)
    # sample 0: best class 0 (0.3 > 0.1); sample 1: best class 1 (0.25 > 0.2)
    assert got[0] == pytest.approx(_sig(s * (0.3 - 0.2)))
    assert got[1] == pytest.approx(_sig(s * (0.25 - 0.0)))


def test_visual_weights_softmax_over_classes() -> None:
    cos_visual = np.array([[0.9, 0.5], [0.2, 0.2]])
    w = visual_weights(cos_visual, 10.0)
    assert w[0, 0] == pytest.approx(math.exp(9) / (math.exp(9) + math.exp(5)))
    assert w[0, 1] == pytest.approx(math.exp(5) / (math.exp(9) + math.exp(5)))
    np.testing.assert_allclose(w[1], [0.5, 0.5])


def test_class_means_normalise_average_and_leave_empty_classes_zero() -> None:
    embeddings = np.array([[3.0, 4.0], [2.0, 0.0], [0.0, 5.0]])
    means = class_mean_embeddings(embeddings, np.array([0, 0, 1]), num_classes=3)
    # class 0: mean of (0.6, 0.8) and (1, 0) is (0.8, 0.4), normalised by sqrt(0.8)
    np.testing.assert_allclose(means[0], [0.8 / math.sqrt(0.8), 0.4 / math.sqrt(0.8)])
    np.testing.assert_allclose(means[1], [0.0, 1.0])
    np.testing.assert_array_equal(means[2], [0.0, 0.0])
    with pytest.raises(InputError):
        class_mean_embeddings(embeddings, np.array([0, 0, 3]), num_classes=3)


def test_vlpure_decision_flips_with_visual_weights() -> None:
    s = 10.0
    cos_yes = np.array([[0.3, 0.3]])
    cos_no = np.array([[0.0, 0.45]])
    cos_visual = np.array([[0.0, 0.8]])
    # by hand: p_class = (1/2, 1/2); p_yes = (sig(3), sig(-1.5))
    a, b = _sig(3.0), _sig(-1.5)
    p_id = [a / 2, b / 2]
    p_ood = 1.0 - sum(p_id)
    w = [1.0 / (1.0 + math.exp(8.0)), math.exp(8.0) / (1.0 + math.exp(8.0))]

    id_plain, ood_plain, pred_plain = vlpure_decision(cos_yes, cos_no, None, s)
    assert id_plain[0] == pytest.approx(max(p_id))
    assert ood_plain[0] == pytest.approx(p_ood)
    assert max(p_id) > p_ood and pred_plain[0]

    id_vis, ood_vis, pred_vis = vlpure_decision(cos_yes, cos_no, cos_visual, s)
    q = [w[0] * p_id[0], w[1] * p_id[1]]
    assert id_vis[0] == pytest.approx(max(q))
    assert ood_vis[0] == pytest.approx(p_ood / 2)
    assert max(q) < p_ood / 2 and not pred_vis[0]


# Two labeled ID samples and one labeled OOD: ID sample 0 turns ID near s = 5, ID sample 1
# only between s = 10 and s = 15; the OOD sample stays OOD at every scale.
TUNE_YES = np.array([[0.3, 0.1], [0.25, 0.2], [0.1, 0.1]])
TUNE_NO = np.array([[0.2, 0.1], [0.2, 0.2], [0.3, 0.3]])
TUNE_IS_ID = np.array([True, True, False])


def _hand_predicted_id(cy: list[float], cn: list[float], s: float) -> bool:
    p_class, p_yes = _hand_probabilities(cy, cn, s)
    p_id = [p_yes[c] * p_class[c] for c in range(len(cy))]
    return max(p_id) > 1.0 - sum(p_id)


def test_tune_scale_on_a_coarse_grid() -> None:
    # hand check of the deciding sample at s = 10 and s = 20
    assert not _hand_predicted_id([0.25, 0.2], [0.2, 0.2], 10.0)
    assert _hand_predicted_id([0.25, 0.2], [0.2, 0.2], 20.0)
    best, accuracy = tune_scale(TUNE_YES, TUNE_NO, None, TUNE_IS_ID, grid=np.array([1.0, 5.0, 10.0, 20.0, 50.0]))
    assert best == 20.0
    assert accuracy == 1.0


def test_tune_scale_default_grid_matches_a_hand_search() -> None:
    expected = None
    for step in range(1, 1001):
        s = round(step * 0.1, 1)
        preds = [_hand_predicted_id(list(TUNE_YES[n]), list(TUNE_NO[n]), s) for n in range(3)]
        if preds == [True, True, False]:
            expected = s
            break
    assert expected is not None and 10.0 < expected < 15.0
    best, accuracy = tune_scale(TUNE_YES, TUNE_NO, None, TUNE_IS_ID)
    assert best == expected
    assert accuracy == 1.0


def test_tune_scale_breaks_ties_by_the_smallest_scale() -> None:
    cos_yes = np.array([[0.9, 0.0], [0.0, 0.0]])
    cos_no = np.array([[0.0, 0.0], [0.9, 0.9]])
    best, accuracy = tune_scale(cos_yes, cos_no, None, np.array([True, False]), grid=np.array([5.0, 1.0, 3.0]))
    assert (best, accuracy) == (1.0, 1.0)


def test_tune_scale_uses_visual_weights() -> None:
    cos_yes = np.array([[0.3, 0.3], [0.3, 0.3]])
    cos_no = np.array([[0.0, 0.45], [0.0, 0.45]])
    cos_visual = np.array([[0.8, 0.0], [0.0, 0.8]])
    # with visual weights sample 0 (weight on its confident class) is ID, sample 1 is not
    _, _, predicted = vlpure_decision(cos_yes, cos_no, cos_visual, 10.0)
    assert predicted.tolist() == [True, False]
    best, accuracy = tune_scale(cos_yes, cos_no, cos_visual, np.array([True, False]), grid=np.array([10.0]))
    assert (best, accuracy) == (10.0, 1.0)
    _, plain_accuracy = tune_scale(cos_yes, cos_no, None, np.array([True, False]), grid=np.array([10.0]))
    assert plain_accuracy == 0.5


def test_tune_scale_without_labeled_ood_or_id_is_nan() -> None:
    for is_id in (np.array([True, True, True]), np.array([False, False, False])):
        best, accuracy = tune_scale(TUNE_YES, TUNE_NO, None, is_id)
        assert math.isnan(best) and math.isnan(accuracy)


def test_tune_scale_full_grid_is_fast() -> None:
    import time

    rng = np.random.default_rng(0)
    n, k = 1000, 10
    args = (rng.uniform(0, 0.4, (n, k)), rng.uniform(0, 0.4, (n, k)), rng.uniform(0.3, 0.9, (n, k)))
    start = time.perf_counter()
    tune_scale(*args, rng.random(n) < 0.5)
    assert time.perf_counter() - start < 2.0  # generous: the test machine may be busy


MEAN = np.array(OPENAI_DATASET_MEAN).reshape(1, 3, 1, 1)
STD = np.array(OPENAI_DATASET_STD).reshape(1, 3, 1, 1)


def test_preprocess_rgb_shape_range_and_normalisation() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 40, 60, 3), dtype=np.uint8)
    out = preprocess_batch(images, 32, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    assert out.shape == (2, 3, 32, 32) and out.dtype.is_floating_point
    unit = out.numpy() * STD + MEAN
    assert unit.min() >= -1e-6 and unit.max() <= 1 + 1e-6
    flat = np.full((1, 50, 50, 3), 200, dtype=np.uint8)
    expected = np.broadcast_to((200 / 255 - MEAN) / STD, (1, 3, 32, 32))
    np.testing.assert_allclose(preprocess_batch(flat, 32).numpy(), expected, atol=1e-5)


def test_preprocess_grayscale_is_repeated_to_three_channels() -> None:
    gray = np.random.default_rng(1).integers(0, 256, (3, 20, 20), dtype=np.uint8)
    for images in (gray, gray[..., None]):
        unit = preprocess_batch(images, 32).numpy() * STD + MEAN
        assert unit.shape == (3, 3, 32, 32)
        np.testing.assert_allclose(unit[:, 0], unit[:, 1], atol=1e-5)
        np.testing.assert_allclose(unit[:, 0], unit[:, 2], atol=1e-5)


def test_preprocess_center_crops_the_longer_side() -> None:
    image = np.zeros((1, 32, 64, 3), dtype=np.uint8)
    image[:, :, 16:48] = 255  # only the central 32 columns survive the crop
    unit = preprocess_batch(image, 32).numpy() * STD + MEAN
    np.testing.assert_allclose(unit, 1.0, atol=1e-5)


def test_preprocess_rejects_bad_input() -> None:
    with pytest.raises(InputError):
        preprocess_batch(np.zeros((1, 8, 8, 3), dtype=np.float32), 32)
    with pytest.raises(InputError):
        preprocess_batch(np.zeros((1, 8, 8, 4), dtype=np.uint8), 32)


def test_visual_weights_with_missing_prototypes() -> None:
    rng = np.random.default_rng(2)
    cy, cn, cv = rng.uniform(0, 0.4, (3, 50, 4))
    everyone = vlpure_decision(cy, cn, cv, 20.0, prototypes=np.ones(4, dtype=bool))
    for got, want in zip(everyone, vlpure_decision(cy, cn, cv, 20.0)):
        np.testing.assert_allclose(got, want)
    # No prototype at all: every class weighs 1/K, i.e. the text-only decision on the 1/K scale.
    id_none, ood_none, pred_none = vlpure_decision(cy, cn, cv, 20.0, prototypes=np.zeros(4, dtype=bool))
    id_text, ood_text, pred_text = vlpure_decision(cy, cn, None, 20.0)
    np.testing.assert_allclose(id_none, id_text / 4)
    np.testing.assert_allclose(ood_none, ood_text / 4)
    np.testing.assert_array_equal(pred_none, pred_text)
    # One class missing: its weight is 1/K, the others share (K-1)/K by the visual softmax.
    p_id, _ = atd_scores(cy, cn, 20.0)
    w = visual_weights(cv[:, :3], 20.0) * 3 / 4
    id_some, _, _ = vlpure_decision(cy, cn, cv, 20.0, prototypes=np.array([True, True, True, False]))
    np.testing.assert_allclose(id_some, np.maximum((w * p_id[:, :3]).max(axis=1), p_id[:, 3] / 4))
    with pytest.raises(InputError, match="prototypes"):
        vlpure_decision(cy, cn, cv, 20.0, prototypes=np.ones(3, dtype=bool))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_preprocess_on_a_device_moves_the_uint8_batch_and_matches_the_host(device: str) -> None:
    images = np.random.default_rng(2).integers(0, 256, (4, 28, 36, 3), dtype=np.uint8)
    host = preprocess_batch(images, 32)
    there = preprocess_batch(images, 32, device=device)
    assert there.device.type == device
    np.testing.assert_allclose(there.cpu().numpy(), host.numpy(), atol=1e-4)
