"""Reserving a group's bundles: a placement group waited for with a clear error when it can never fit a cluster
that cannot grow (and progress lines while it waits), and one shared by several groups (colocated placement)."""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group

from actors.calls import WorkerError
from actors.cluster import can_autoscale, cluster_nodes
from actors.placement import check_placement, describe_nodes, fmt_bundle

# ---------------------------------------------------------------------------------------------------------
# Placement: can a group ever fit, and can the cluster grow?
#
# A placement group that does not fit waits for resources. That is right where an autoscaler can add nodes,
# or where other groups hold what it needs (they may free it); on a fixed cluster that is too small it only
# delays the failure. ``check_placement`` (pure) says whether the bundles fit the nodes' totals at all and
# whether they fit what is free now; ``can_autoscale`` says whether nodes may join.

POLL_S = 2.0  # how often a waiting group re-checks (the fail-fast latency on a fixed cluster)
PROGRESS_S = 15.0  # how often a waiting group says what it waits for


def _held_by_others(own: Any) -> str:
    try:
        table = ray.util.placement_group_table()
    except Exception:
        return ""
    own_id = own.id.hex()
    held = []
    for pg_id, info in table.items():
        if pg_id == own_id or info.get("state") != "CREATED":
            continue
        bundles = list((info.get("bundles") or {}).values())
        label = info.get("name") or pg_id[:8]
        held.append(f"{label} ({len(bundles)} x {fmt_bundle(bundles[0]) if bundles else '{}'})")
    return ", ".join(held)


def _fields_hint(name: str, strategy: str, sizing: str | None) -> str:
    fields = sizing or f"the {name} group's worker count / CPUs / GPUs in the config"
    loosen = f", use a looser ray.placement_strategy than {strategy}" if strategy.startswith("STRICT") else ""
    return f"Lower {fields}{loosen}, or give the cluster more (ray.num_cpus for a local cluster, more nodes)"


def wait_ready(pg: Any, name: str, bundles: list[dict[str, float]], strategy: str, timeout_s: float,
                sizing: str | None = None) -> None:
    """Wait for a placement group; raise WorkerError at once when it can never fit a cluster that cannot
    grow, else after ``timeout_s``. Says what it waits for at once and every PROGRESS_S."""
    asked = f"{len(bundles)} x {fmt_bundle(bundles[0])} (strategy {strategy})"
    start = time.monotonic()
    deadline, last_print = start + timeout_s, -PROGRESS_S
    ready = pg.ready()
    grows: bool | None = None
    why_grows = ""
    while True:
        left = deadline - time.monotonic()
        done, _ = ray.wait([ready], timeout=max(0.05, min(POLL_S, left)))
        if done:
            ray.get(ready)
            return
        nodes = cluster_nodes()
        check = check_placement(bundles, strategy, nodes)
        if grows is None:
            grows, why_grows = can_autoscale()
        table = describe_nodes(nodes, list(bundles[0]))
        if not check.possible and grows is False:
            raise WorkerError(
                f"{name}: cannot place {asked}: {check.reason}. The cluster cannot add nodes ({why_grows}), so "
                f"waiting would not help. Nodes:\n{table}\n{_fields_hint(name, strategy, sizing)}; "
                "set ray.autoscaling=on if nodes will join."
            )
        if not check.possible:
            state = f"more than the nodes have ({check.reason}); waiting for the autoscaler ({why_grows})"
        elif not check.fits_free:
            state = (f"fits the nodes but not what is free now ({check.reason}); held by placement groups: "
                     f"{_held_by_others(pg) or 'none listed'} (they may free it)")
        else:
            state = "fits what is free; waiting for Ray to place it"
        now = time.monotonic()
        if now >= deadline:
            raise WorkerError(
                f"{name}: could not reserve {asked} within {timeout_s:.0f}s: {state}. Nodes:\n{table}\n"
                f"{_fields_hint(name, strategy, sizing)}"
            )
        if now - last_print >= PROGRESS_S:
            last_print = now
            print(f"[raylhf] {name}: waiting for {asked} ({now - start:.0f}s of {timeout_s:.0f}s): {state}. "
                  f"Nodes:\n{table}", flush=True)


class SharedPlacement:
    """One placement group whose bundles several actor groups share (``rollout.placement=colocate``: bundle i holds
    policy rank i and an engine's shard). Created and waited for like a group's own; removed by its owner."""

    def __init__(self, bundles: list[dict[str, float]], strategy: str, name: str, start_timeout_s: float = 600.0,
                 sizing: str | None = None) -> None:
        self.bundles = bundles
        self.pg: Any = placement_group(bundles, strategy=strategy, name=f"raylhf-{name}")
        try:
            wait_ready(self.pg, name, bundles, strategy, start_timeout_s, sizing)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None
