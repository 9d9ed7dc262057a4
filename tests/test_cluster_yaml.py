"""cluster.yaml is a valid Ray autoscaler config and launches what raylhf needs.

Validation uses the installed Ray's own checks, offline: its JSON schema
(ray/autoscaler/ray-schema.json) on the file as written, and the same
prepare_config + validate_config pair that `ray up` runs before it touches the cloud.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ray_autoscaler = pytest.importorskip("ray.autoscaler")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"
SCHEMA_PATH = Path(ray_autoscaler.__file__).parent / "ray-schema.json"

# GPUs per instance for the types we might declare; a wrong count in `resources` makes Ray over- or
# under-schedule the node.
KNOWN_GPUS = {
    "g5.xlarge": 1,
    "g5.2xlarge": 1,
    "g5.12xlarge": 4,
    "g5.48xlarge": 8,
    "g6e.12xlarge": 4,
    "p4d.24xlarge": 8,
    "p4de.24xlarge": 8,
    "p5.48xlarge": 8,
    "p5e.48xlarge": 8,
    "p5en.48xlarge": 8,
}


def load() -> dict[str, Any]:
    with CLUSTER_YAML.open() as f:
        return yaml.safe_load(f)


def ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` checks before provisioning: schema on the raw file, then defaults + validate_config."""
    with SCHEMA_PATH.open() as f:
        schema = json.load(f)
    jsonschema.validate(config, schema)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return load()


def gpu_worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: nt
        for name, nt in config["available_node_types"].items()
        if name != config["head_node_type"] and nt.get("resources", {}).get("GPU", 0) > 0
    }


def test_schema_file_is_present():
    assert SCHEMA_PATH.is_file(), SCHEMA_PATH


def test_validates_against_ray_schema(config):
    prepared = ray_validate(config)
    # prepare_config merged Ray's AWS defaults and per-type limits without changing ours.
    assert prepared["max_workers"] == config["max_workers"]
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["max_workers"] == 0


def test_provider_is_aws_us_west_2(config):
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"] == "us-west-2"
    assert config["idle_timeout_minutes"] > 0


def test_head_has_no_gpu(config):
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert "GPU" in head["resources"], "declare GPU: 0 so Ray never autodetects GPUs on the head"
    instance = head["node_config"]["InstanceType"]
    assert not re.match(r"^(g\d|p\d)", instance), f"head {instance} is a GPU instance type"


def test_gpu_worker_type_exists(config):
    workers = gpu_worker_types(config)
    assert workers, "no worker node type declares a GPU resource"
    for name, nt in workers.items():
        gpus = nt["resources"]["GPU"]
        assert isinstance(gpus, int) and gpus >= 1, name
        instance = nt["node_config"]["InstanceType"]
        if instance in KNOWN_GPUS:
            assert gpus == KNOWN_GPUS[instance], f"{name}: {instance} has {KNOWN_GPUS[instance]} GPUs"
        assert nt["resources"].get("CPU", 1) >= gpus, f"{name}: fewer CPUs than GPUs"


def test_worker_limits(config):
    total_min = 0
    for name, nt in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue
        lo, hi = nt.get("min_workers", 0), nt.get("max_workers", config["max_workers"])
        assert 0 <= lo <= hi, name
        assert hi <= config["max_workers"], name
        total_min += lo
    assert total_min <= config["max_workers"]
    assert any(nt.get("max_workers", config["max_workers"]) > 0 for nt in gpu_worker_types(config).values())


def test_syncs_checkout_and_installs_gpu_extra(config):
    assert config["file_mounts"].get("~/raylhf") == "."
    install = [c for c in config["setup_commands"] if "install" in c and "raylhf" in c]
    assert install, "setup_commands never install the project"
    assert any("-e" in c.split() and "raylhf[gpu]" in c for c in install), install


def test_start_commands(config):
    head, worker = config["head_start_ray_commands"], config["worker_start_ray_commands"]
    assert head[0] == "ray stop" and worker[0] == "ray stop"
    head_start = " ".join(head[1:])
    assert "ray start --head" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "--address=$RAY_HEAD_IP:6379" in " ".join(worker[1:])


def test_commented_example_configs_exist():
    text = CLUSTER_YAML.read_text()
    mentioned = set(re.findall(r"examples/configs/[\w.-]+\.yaml", text))
    assert mentioned, "the usage comment should name an example config"
    for rel in sorted(mentioned):
        assert (ROOT / rel).is_file(), f"cluster.yaml mentions missing {rel}"


def _unknown_top_level_key(c):
    c["max_worker"] = 3


def _string_max_workers(c):
    c["max_workers"] = "2"


def _fractional_gpu_resource(c):
    next(iter(gpu_worker_types(c).values()))["resources"]["GPU"] = 0.5


def _node_type_without_resources(c):
    del next(iter(gpu_worker_types(c).values()))["resources"]


def _unknown_node_type_key(c):
    next(iter(gpu_worker_types(c).values()))["gpus"] = 4


def _min_workers_above_global_max(c):
    nt = next(iter(gpu_worker_types(c).values()))
    nt["min_workers"] = nt["max_workers"] = c["max_workers"] + 1


def _head_type_not_declared(c):
    c["head_node_type"] = "no_such_type"


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        (_unknown_top_level_key, "'max_worker' was unexpected"),
        (_string_max_workers, "is not of type 'integer'"),
        (_fractional_gpu_resource, "is not of type 'integer'"),
        (_node_type_without_resources, "'resources' is a required property"),
        (_unknown_node_type_key, "'gpus' was unexpected"),
        (_min_workers_above_global_max, "smaller than the sum of `min_workers`"),
        (_head_type_not_declared, "must be one of `available_node_types`"),
    ],
)
def test_broken_copies_are_rejected(config, breakage, reason):
    broken = copy.deepcopy(config)
    breakage(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=re.escape(reason)):
        ray_validate(broken)
