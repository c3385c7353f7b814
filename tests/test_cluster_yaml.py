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


def test_every_job_file_the_deployment_files_name_exists():
    import re

    for name in ("cluster.yaml", "README.md", "docker/Dockerfile"):
        for job in re.findall(r"jobs/[\w.-]+\.yaml", (REPO / name).read_text()):
            assert (REPO / job).is_file(), f"{name} names {job}, which does not exist"


def test_nodes_get_least_privilege_instance_profiles_scoped_to_the_run_bucket():
    import json

    config = _config()
    for node_type, role in (("head", "osal-ray-head"), ("gpu_worker", "osal-ray-worker")):
        arn = config["available_node_types"][node_type]["node_config"]["IamInstanceProfile"]["Arn"]
        assert arn.endswith(f":instance-profile/{role}")
    for policy_file in ("head-policy.json", "worker-policy.json"):
        statements = json.loads((REPO / "deploy" / "iam" / policy_file).read_text())["Statement"]
        for statement in statements:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert not any(action.endswith("*") for action in actions), f"{policy_file}: wildcard action"
            if any(action.startswith("s3:") for action in actions):
                assert statement["Resource"].startswith("arn:aws:s3:::YOUR_BUCKET"), f"{policy_file}: S3 not scoped"
        worker_actions = {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
        if policy_file == "worker-policy.json":
            assert not any(a.startswith(("ec2:", "iam:")) for a in worker_actions)


def test_the_image_pins_torch_to_its_cuda_and_installs_the_extras():
    import re

    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    cuda = re.search(r"^FROM rayproject/ray:[\d.]+-py3\d+-(cu\d+)$", dockerfile, re.M).group(1)
    assert f"download.pytorch.org/whl/{cuda}" in dockerfile
    assert re.search(r"torch==\$\{TORCH_VERSION\}", dockerfile) and re.search(r"ARG TORCH_VERSION=\d", dockerfile)
    assert "[clip,optuna]" in dockerfile
