"""Placement checks: whether a group's bundles fit the cluster's nodes under a strategy, and a table of the nodes
for messages (pure: tested without Ray)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

_EPS = 1e-6


_UNBOUNDED = 1 << 30


@dataclass(frozen=True)
class NodeCapacity:
    """One alive node: a display name, its total resources and what is free now."""

    name: str
    total: dict[str, float]
    free: dict[str, float]


@dataclass(frozen=True)
class PlacementCheck:
    possible: bool  # the bundles fit the nodes' totals (perhaps only once other groups free theirs)
    fits_free: bool  # they fit what is free now
    reason: str  # why not (possible, else free now); "" when they fit


def _num(x: float) -> str:
    return f"{x:g}"


def fmt_bundle(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {_num(v)}" for k, v in bundle.items()) + "}"


def _fits(bundle: dict[str, float], res: dict[str, float]) -> bool:
    return all(res.get(k, 0.0) + _EPS >= v for k, v in bundle.items() if v > 0)


def _copies(bundle: dict[str, float], res: dict[str, float]) -> int:
    """How many copies of ``bundle`` one node with ``res`` holds."""
    need = [(k, v) for k, v in bundle.items() if v > 0]
    if not need:
        return _UNBOUNDED
    return min(int((res.get(k, 0.0) + _EPS) // v) for k, v in need)


def _sum(bundles: Sequence[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _spread_matching(bundles: Sequence[dict[str, float]], nodes: Sequence[dict[str, float]]) -> int:
    """Most bundles placed one per node (bipartite matching, Kuhn's augmenting paths)."""
    owner: dict[int, int] = {}  # node -> bundle

    def place(b: int, seen: set[int]) -> bool:
        for n, res in enumerate(nodes):
            if n not in seen and _fits(bundles[b], res):
                seen.add(n)
                if n not in owner or place(owner[n], seen):
                    owner[n] = b
                    return True
        return False

    return sum(place(b, set()) for b in range(len(bundles)))


def unplaceable(bundles: Sequence[dict[str, float]], strategy: str, nodes: Sequence[dict[str, float]],
                where: str = "on the nodes") -> str:
    """Why ``bundles`` cannot be placed with ``strategy`` on nodes with these resources; "" if they can.

    Exact for identical bundles (every ActorGroup); for mixed bundles under PACK / SPREAD only the
    necessary conditions are checked (each bundle fits some node, the cluster-wide sums), so a "" there
    may still not pack. PACK and SPREAD are soft: any node may take any number of bundles.
    """
    if not bundles:
        return ""
    for b in {tuple(sorted(b.items())): b for b in bundles}.values():
        if not any(_fits(b, res) for res in nodes):
            return f"one bundle {fmt_bundle(b)} is bigger than any node"
    need = _sum(bundles)
    for k, v in need.items():
        have = sum(res.get(k, 0.0) for res in nodes)
        if v > have + _EPS:
            return f"{_num(v)} {k} asked in all, {_num(have)} {k} {where} together"
    n = len(bundles)
    identical = all(b == bundles[0] for b in bundles)
    if strategy == "STRICT_PACK":
        if not any(_fits(need, res) for res in nodes):
            return f"STRICT_PACK puts all bundles ({fmt_bundle(need)}) on one node and no node holds that"
    elif strategy == "STRICT_SPREAD":
        placed = _spread_matching(bundles, nodes)
        if placed < n:
            return f"STRICT_SPREAD puts each bundle on its own node and only {placed} node(s) can take one"
    elif identical:
        held = sum(min(_copies(bundles[0], res), n) for res in nodes)
        if held < n:
            return f"the nodes hold at most {held} x {fmt_bundle(bundles[0])} (bundles do not split across nodes)"
    return ""


def check_placement(bundles: Sequence[dict[str, float]], strategy: str, nodes: Sequence[NodeCapacity]
                    ) -> PlacementCheck:
    why_never = unplaceable(bundles, strategy, [n.total for n in nodes])
    if why_never:
        return PlacementCheck(False, False, why_never)
    why_not_now = unplaceable(bundles, strategy, [n.free for n in nodes], "free on the nodes")
    return PlacementCheck(True, not why_not_now, why_not_now)


def describe_nodes(nodes: Sequence[NodeCapacity], keys: Sequence[str] = ()) -> str:
    """One line per node: total and free CPU, GPU and any other resource in ``keys``."""
    names = list(dict.fromkeys(["CPU", "GPU", *keys]))
    lines = [f"  {n.name}: " + ", ".join(f"{k} {_num(n.total.get(k, 0.0))} total / {_num(n.free.get(k, 0.0))} free"
                                        for k in names) for n in nodes]
    return "\n".join(lines) or "  (no alive nodes)"
