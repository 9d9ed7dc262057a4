"""What the cluster can do: whether it autoscales (ray.autoscaling, or detected from the node types) and each
node's free capacity."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import ray

from actors.placement import NodeCapacity

_READONLY_TYPE = re.compile(r"node_[0-9a-f]{16,}")


def autoscaler_from_node_types(node_types: Sequence[str]) -> bool | None:
    """Ray's monitor without an autoscaling config (``ray start --head``, ``ray.init()``, a test Cluster)
    runs a read-only provider that names every node's type ``node_<node id>``; a real autoscaler (cluster
    YAML, KubeRay) uses the configured type names. None: no node types known yet."""
    if not node_types:
        return None
    return not all(_READONLY_TYPE.fullmatch(t) for t in node_types)


# gcs address -> (can autoscale, why); written by raylhf.driver.cluster.init_ray for the cluster it joined
_CLUSTER_MODE: dict[str, tuple[bool | None, str]] = {}


def _gcs_address() -> str:
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:  # not connected
        return ""


def set_cluster_autoscaling(mode: str, started_here: bool) -> None:
    """Record ``ray.autoscaling`` (auto | on | off) for the cluster this driver just joined or started."""
    if mode == "on":
        decision: tuple[bool | None, str] = (True, "ray.autoscaling=on")
    elif mode == "off":
        decision = (False, "ray.autoscaling=off")
    elif started_here:
        decision = (False, "a local cluster started by raylhf, ray.autoscaling=auto")
    else:
        decision = (None, "ray.autoscaling=auto")
    _CLUSTER_MODE[_gcs_address()] = decision


def detect_autoscaler() -> tuple[bool | None, str]:
    """Ask the cluster's monitor (autoscaler v1 status in the GCS KV, or v2 cluster status) for its node
    types; see ``autoscaler_from_node_types``. (None, why) when that cannot be read (yet)."""
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        if is_autoscaler_v2(fetch_from_server=True):
            from ray.autoscaler.v2.sdk import get_cluster_status

            status = get_cluster_status(_gcs_address())
            types = [n.ray_node_type_name for n in [*status.active_nodes, *status.idle_nodes]]
        else:
            from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
            from ray.experimental.internal_kv import _internal_kv_get

            raw = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
            report = (json.loads(raw).get("autoscaler_report") or {}) if raw else {}
            types = [*(report.get("active_nodes") or {}), *(report.get("idle_nodes") or {})]
    except Exception as e:  # an older or newer Ray, a monitor that has not reported yet
        return None, f"autoscaler state unreadable ({type(e).__name__}: {e})"
    found = autoscaler_from_node_types(types)
    if found is None:
        return None, "ray.autoscaling=auto; the cluster's monitor has not reported node types yet"
    if found:
        return True, f"ray.autoscaling=auto; Ray reports an autoscaler (node types {sorted(set(types))})"
    return False, "ray.autoscaling=auto; Ray reports no autoscaler (a fixed set of nodes)"


def can_autoscale() -> tuple[bool | None, str]:
    """(True/False, why) when known; (None, why) when unknown, which callers treat as 'may grow'."""
    recorded, why = _CLUSTER_MODE.get(_gcs_address(), (None, ""))
    if recorded is not None:
        return recorded, why
    return detect_autoscaler()


def cluster_nodes() -> list[NodeCapacity]:
    """Every alive node's total and free resources, from the GCS."""
    from ray._private import state

    totals = state.total_resources_per_node()
    free = state.available_resources_per_node()
    addr = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n.get("Alive")}
    return [NodeCapacity(f"{addr.get(nid, '?')} ({nid[:8]})", dict(t), dict(free.get(nid, {})))
            for nid, t in sorted(totals.items())]
