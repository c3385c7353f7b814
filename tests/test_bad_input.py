"""Bad input found before expensive work: one line naming the key or file, exit code 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from osal_ray.config import DataConfig, load_config
from osal_ray.data import load_dataset
from osal_ray.errors import InputError
from osal_ray.experiment import prepare_experiment


def test_scientific_notation_is_a_number_in_yaml_and_set(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-4\n")
    config = load_config(job, ["detector.temperature=2.5e-1"])
    assert (config.train.lr, config.train.weight_decay, config.detector.temperature) == (0.001, 0.0005, 0.25)


@pytest.mark.parametrize("override", ["train.lr=.inf", "detector.temperature=.inf", "train.lr=.nan", "data.ood_ratio=-.inf"])
def test_non_finite_numbers_are_refused(override):
    with pytest.raises(InputError, match=rf"{override.split('=')[0]}: expected a finite number"):
        load_config(None, [override])


@pytest.mark.parametrize("where", ["file", "proc"])
def test_an_output_directory_that_cannot_exist_is_exit_2(tmp_path, where):
    if where == "file":
        (tmp_path / "plain").write_text("x")
        target = tmp_path / "plain" / "out"
    else:
        target = "/proc/osal_ray_cannot_be_here"
    result = subprocess.run([sys.executable, "-m", "osal_ray.run", "--output-dir", str(target)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"osal_ray: error: --output-dir: cannot create {target}: ")


def _folder(root, classes):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_a_two_class_folder_says_one_class_must_stay_unknown(tmp_path, digits_config):
    _folder(tmp_path / "imgs", ["cat", "dog"])
    config = digits_config(**{"data.dataset": "image_folder", "data.root": str(tmp_path / "imgs"), "data.known_classes": 2,
                              "data.image_size": 8, "data.test_fraction": 0.25})
    with pytest.raises(InputError, match="at least one class that stays unknown"):
        prepare_experiment(config, log=lambda _: None)


def test_an_image_over_the_decompression_limit_is_named(tmp_path, monkeypatch):
    _folder(tmp_path / "imgs", ["a", "b", "c"])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)
    with pytest.raises(InputError, match=r"cannot read image .*\.png: .*(decompression|exceeds limit)"):
        load_dataset(DataConfig(dataset="image_folder", root=str(tmp_path / "imgs"), image_size=8))


@pytest.mark.parametrize("override, key", [("seeds=[18446744073709551616]", "seeds"), ("seeds=[4294967296]", "seeds"),
                                           ("train.lr=1e308", "train.lr"), ("sweep.seed=-1", "sweep.seed")])
def test_numbers_outside_what_training_takes_are_refused_before_anything_is_written(tmp_path, override, key):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "osal_ray.run", "--set", override, "--output-dir", str(out)],
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"osal_ray: error: {key}: "), result.stderr
    assert not out.exists()  # no config.yaml, no checkpoints: Ray never started
