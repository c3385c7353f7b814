"""Packaging: the console script's --version and --list, the extras, and what a job says when it needs one."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Runs a snippet with some packages made unimportable, as on an install without that extra.
WITHOUT = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None
{body}
"""


def _python(body: str, blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT.format(blocked=blocked, body=body)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_the_console_script_prints_its_version_and_registries():
    import osal_ray
    from osal_ray.data import DATASETS
    from osal_ray.models import MODELS
    from osal_ray.strategies import STRATEGIES

    version = subprocess.run([sys.executable, "-m", "osal_ray.run", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith(f"osal_ray {osal_ray.__version__} (ray 2.")
    for kind, registry in (("strategies", STRATEGIES), ("datasets", DATASETS), ("models", MODELS)):
        listed = subprocess.run([sys.executable, "-m", "osal_ray.run", "--list", kind], capture_output=True, text=True)
        assert listed.returncode == 0
        assert [line.split()[0] for line in listed.stdout.splitlines()] == registry.names()
    assert "[scores: det_pred, det_mav" in subprocess.run(
        [sys.executable, "-m", "osal_ray.run", "--list", "strategies"], capture_output=True, text=True).stdout


def test_the_package_declares_its_extras_and_ray_floor():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "ray[default,data,train,tune,serve]>=2.60,<3" in project["dependencies"]
    assert not any(dep.startswith(("open_clip", "optuna", "label-studio")) for dep in project["dependencies"])
    assert project["optional-dependencies"]["clip"] == ["open_clip_torch>=2.24", "huggingface_hub>=0.20"]
    assert project["optional-dependencies"]["optuna"] == ["optuna>=3.0"]
    assert project["optional-dependencies"]["label-studio"] == ["label-studio-sdk>=2.0,<3"]
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_without_the_clip_extra_every_module_but_clip_loading_imports_and_a_clip_job_says_what_to_install():
    body = """
import importlib, pkgutil, osal_ray
skipped = {{"osal_ray.clip.loading", "osal_ray.clip.model", "osal_ray.clip.preprocess", "osal_ray.clip.prompts"}}
for info in pkgutil.walk_packages(osal_ray.__path__, "osal_ray."):
    if info.name not in skipped:
        importlib.import_module(info.name)
from osal_ray.run import main
code = main(["--config", "jobs/digits.yaml", "--set", "strategies=[vlpure]", "--output-dir", {out!r}])
print("exit", code)
"""
    result = _python(body.format(out="/tmp/osal-no-clip-extra"), blocked=("open_clip",))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "exit 2" in result.stdout
    assert "osal_ray[clip]" in result.stderr and "strategies" in result.stderr
    assert "Started a local Ray" not in result.stderr


def test_without_the_optuna_extra_an_optuna_sweep_says_what_to_install(tmp_path):
    body = """
from osal_ray.run import main
print("exit", main(["--config", "jobs/digits.yaml", "--set", "sweep.searcher=optuna",
                    "--set", "sweep.space={{train.lr: {{uniform: [0.001, 0.01]}}}}", "--output-dir", {out!r}]))
"""
    result = _python(body.format(out=str(tmp_path / "sweep")), blocked=("optuna",))
    assert "exit 2" in result.stdout, result.stderr[-2000:]
    assert "sweep.searcher" in result.stderr and "osal_ray[optuna]" in result.stderr


@pytest.mark.parametrize("module", ["open_clip", "optuna"])
def test_an_installed_extra_passes_the_check(module):
    from osal_ray.extras import require_extra

    require_extra(module, "field", "a test")


@pytest.mark.slow
def test_a_run_keeps_a_log_of_what_it_printed_in_its_output_directory(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "osal_ray.run", "--set", "al.rounds=1", "--set", "strategies=[random]",
               "--output-dir", str(out)]
    for _ in range(2):  # the second invocation resumes (nothing to do) and appends its own part
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    log = (out / "run.log").read_text()
    assert log.count("=== ") == 2 and "osal-ray --set al.rounds=1" in log
    assert "round 1/1" in log and "outputs in" in log  # the round lines and the summary, as on stdout
    assert "\x1b[" not in log
    assert log.count("Started a local Ray instance") == 2  # once per invocation: Ray's own lines are not doubled
