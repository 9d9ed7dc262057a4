"""Placement feasibility (pure): can gang-created bundles ever fit these nodes, and do they fit now?"""

from __future__ import annotations

import pytest

from actors.cluster import autoscaler_from_node_types
from actors.placement import NodeCapacity, check_placement, describe_nodes, unplaceable

CPU1 = {"CPU": 1.0}


def node(cpu: float, gpu: float = 0.0, free_cpu: float | None = None, free_gpu: float | None = None,
         name: str = "n") -> NodeCapacity:
    total = {"CPU": cpu, **({"GPU": gpu} if gpu else {})}
    free = {"CPU": cpu if free_cpu is None else free_cpu, "GPU": gpu if free_gpu is None else free_gpu}
    return NodeCapacity(name, total, free)


def test_fits_one_node() -> None:
    assert unplaceable([CPU1] * 4, "PACK", [{"CPU": 4}]) == ""
    assert unplaceable([], "STRICT_PACK", []) == ""


def test_more_than_the_cluster_sum() -> None:
    why = unplaceable([CPU1] * 8, "PACK", [{"CPU": 4}])
    assert "8 CPU asked in all, 4 CPU" in why


def test_bundle_bigger_than_any_node() -> None:
    # 2 nodes x 4 CPUs = 8 in all, but one 6-CPU bundle fits neither
    why = unplaceable([{"CPU": 6.0}], "PACK", [{"CPU": 4}, {"CPU": 4}])
    assert "bigger than any node" in why and "CPU: 6" in why


def test_bundles_do_not_split_across_nodes() -> None:
    # a 2-CPU node holds one 1.5-CPU bundle and a 3-CPU node two: 3 bundles fit
    assert unplaceable([{"CPU": 1.5}] * 3, "PACK", [{"CPU": 2}, {"CPU": 3}]) == ""
    # 4 x 1.5 = 6 <= 2 + 3 + 1 = 6, but the nodes hold 1 + 2 + 0 = 3 bundles
    why = unplaceable([{"CPU": 1.5}] * 4, "SPREAD", [{"CPU": 2}, {"CPU": 3}, {"CPU": 1}])
    assert "at most 3 x {CPU: 1.5}" in why


def test_gpu_bundles_count_per_node() -> None:
    bundle = {"CPU": 1.0, "GPU": 1.0}
    nodes = [{"CPU": 8, "GPU": 4}, {"CPU": 8}]
    assert unplaceable([bundle] * 4, "PACK", nodes) == ""
    assert "5 GPU asked in all, 4 GPU" in unplaceable([bundle] * 5, "PACK", nodes)
    # the sums fit (9 <= 12 CPU, 3 <= 5 GPU) but one node runs out of GPUs, the other of CPUs: 1 + 1 bundles
    why = unplaceable([{"CPU": 3.0, "GPU": 1.0}] * 3, "PACK", [{"CPU": 8, "GPU": 1}, {"CPU": 4, "GPU": 4}])
    assert "at most 2 x {CPU: 3, GPU: 1}" in why


def test_strict_pack_needs_one_node() -> None:
    nodes = [{"CPU": 4}, {"CPU": 4}]
    assert unplaceable([CPU1] * 6, "PACK", nodes) == ""
    why = unplaceable([CPU1] * 6, "STRICT_PACK", nodes)
    assert "STRICT_PACK" in why and "CPU: 6" in why
    assert unplaceable([CPU1] * 4, "STRICT_PACK", nodes) == ""


def test_strict_spread_needs_distinct_nodes() -> None:
    nodes = [{"CPU": 4}, {"CPU": 4}, {"CPU": 0.5}]
    assert unplaceable([CPU1] * 2, "STRICT_SPREAD", nodes) == ""
    why = unplaceable([CPU1] * 3, "STRICT_SPREAD", nodes)
    assert "only 2 node(s)" in why
    # mixed bundles: the big one must take the big node, the small one the other (a matching, not greedy)
    mixed = [{"CPU": 0.5}, {"CPU": 3.0}]
    assert unplaceable(mixed, "STRICT_SPREAD", [{"CPU": 4}, {"CPU": 0.5}]) == ""


def test_fractional_cpus_tolerate_rounding() -> None:
    assert unplaceable([{"CPU": 0.1}] * 10, "PACK", [{"CPU": 1.0}]) == ""
    assert unplaceable([{"CPU": 1 / 3}] * 3, "STRICT_PACK", [{"CPU": 1.0}]) == ""


def test_check_separates_never_from_not_now() -> None:
    nodes = [node(4, free_cpu=1, name="a"), node(4, free_cpu=0, name="b")]
    never = check_placement([CPU1] * 9, "PACK", nodes)
    assert (never.possible, never.fits_free) == (False, False)
    held = check_placement([CPU1] * 4, "PACK", nodes)  # fits the totals; other groups hold 7 of 8 CPUs
    assert (held.possible, held.fits_free) == (True, False) and "4 CPU asked in all, 1 CPU free on the nodes together" in held.reason
    free = check_placement([CPU1], "PACK", nodes)
    assert (free.possible, free.fits_free, free.reason) == (True, True, "")


def test_describe_nodes_shows_totals_and_free() -> None:
    text = describe_nodes([node(4, free_cpu=2.5, name="10.0.0.1 (abcd)")])
    assert "10.0.0.1 (abcd): CPU 4 total / 2.5 free, GPU 0 total / 0 free" in text
    assert "no alive nodes" in describe_nodes([])


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        ([], None),
        (["node_" + "ab" * 28], False),  # read-only provider: `ray start --head`, ray.init(), test Cluster
        (["node_" + "ab" * 28, "node_" + "cd" * 28], False),
        (["head_cpu"], True),  # a cluster YAML's head before any worker joined
        (["ray.head.default", "node_" + "ab" * 28], True),
    ],
)
def test_autoscaler_from_node_types(types: list[str], expected: bool | None) -> None:
    assert autoscaler_from_node_types(types) is expected
