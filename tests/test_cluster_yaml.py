"""cluster.yaml against the schema that ships with Ray, plus the properties the README promises."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_config()))  # what `ray up` does before anything else


def test_cluster_yaml_invalid_key_is_caught():
    import jsonschema
    import pytest
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _config()
    config["available_node_types"]["gpu_worker"]["max_workerz"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))


def test_cluster_yaml_keeps_the_dashboard_private_and_uses_ray_cuda_image():
    config = _config()
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    opened = [p["FromPort"] for p in config["provider"]["security_group"]["IpPermissions"]]
    assert opened == [22]
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    import re

    assert re.search(r"^FROM rayproject/ray:\d+\.\d+\.\d+-py3\d+-cu\d+$", dockerfile, re.M)
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] == 1 and gpu["min_workers"] <= gpu["max_workers"]
