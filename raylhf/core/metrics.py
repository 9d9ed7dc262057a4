"""How training metrics combine: over micro-batches (policy rank), data-parallel ranks and optimizer steps.

One rule set for every level, by key:

* ``..._max`` -> max and ``..._min`` -> min (over the rows that trained tokens: weight > 0, when weights
  are given, so an empty micro-batch's placeholder ``0.0`` never wins);
* a key starting with one of ``sum_prefixes`` -> sum (the loss terms are already divided by the step's
  global counts, so their pieces add up to the whole batch's value);
* anything else -> mean, weighted by ``weights`` (token counts) when given.

Callers pass the prefixes of their level: :data:`SUM_METRICS` within a rank, :data:`RANK_SUM_METRICS`
across ranks, none across optimizer steps (there every loss is a per-step value and is averaged).
Pure Python, no torch: importable from the actors and from the driver.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["RANK_SUM_METRICS", "SUM_METRICS", "reduce_metrics", "reduce_rule"]

# globally normalized terms: the micro-batches of one rank add up
SUM_METRICS: tuple[str, ...] = ("loss/", "entropy")
# ... and so do the ranks, plus the token count itself
RANK_SUM_METRICS: tuple[str, ...] = (*SUM_METRICS, "train_tokens")


def reduce_rule(key: str, sum_prefixes: Sequence[str] = ()) -> str:
    """``"max"``, ``"min"``, ``"sum"`` or ``"mean"`` for ``key``."""
    if key.endswith("_max"):
        return "max"
    if key.endswith("_min"):
        return "min"
    if key.startswith(tuple(sum_prefixes)):
        return "sum"
    return "mean"


def reduce_metrics(
    rows: Sequence[Mapping[str, float]],
    weights: Sequence[float] | None = None,
    sum_prefixes: Sequence[str] = (),
) -> dict[str, float]:
    """Combine metric dicts into one (keys in first-seen order; a key reduces over the rows that have it).

    ``weights`` (one per row, e.g. trained tokens) weight the means and drop zero-weight rows from means,
    maxima and minima; if no row with the key has a positive weight, the key reduces without weights.
    """
    if weights is not None and len(weights) != len(rows):
        raise ValueError(f"{len(weights)} weights for {len(rows)} metric rows")
    ws = [1.0] * len(rows) if weights is None else [float(w) for w in weights]
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    out: dict[str, float] = {}
    for k in keys:
        have = [(float(r[k]), w) for r, w in zip(rows, ws, strict=True) if k in r]
        rule = reduce_rule(k, sum_prefixes)
        if rule == "sum":
            out[k] = sum(v for v, _ in have)
            continue
        pairs = [(v, w) for v, w in have if w > 0] if weights is not None else have
        if not pairs:
            pairs = [(v, 1.0) for v, _ in have]
        vals = [v for v, _ in pairs]
        if rule == "max":
            out[k] = max(vals)
        elif rule == "min":
            out[k] = min(vals)
        else:
            out[k] = sum(v * w for v, w in pairs) / sum(w for _, w in pairs)
    return out
