"""curves.png: the runs metric curves (matplotlib, no display needed). See docs/logging.md."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from raylhf.driver.metrics_log import is_number


def curve_style(steps: list[int]) -> dict[str, Any]:
    """How to draw a series measured at ``steps`` (sorted, distinct).

    Only consecutive steps are joined by a line; a series whose points are all isolated (e.g. eval at
    step 0 and at the last step, or every N > 1 steps) is drawn as points only. Markers whenever there
    are few points or any isolated point (which a plain line would not show).
    """
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    joined = 1 in gaps
    # a point with no neighbour one step away on either side
    lonely = any((i == 0 or gaps[i - 1] > 1) and (i == len(gaps) or gaps[i] > 1) for i in range(len(steps)))
    few = len(steps) < 10
    return {"linestyle": "-" if joined else "none",
            "marker": "o" if few or lonely else None,
            "markersize": 4 if few or not joined else 2.5}


def curve_figure(history: list[dict[str, Any]], keys: list[str], title: str) -> Any:
    """A matplotlib Figure with one series per metric key (the steps where it was measured), or None."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    drawn = False
    for k in keys:
        by_step = {int(r["step"]): float(r[k]) for r in history
                   if is_number(r.get(k)) and math.isfinite(r[k])}
        if not by_step:
            continue
        steps = sorted(by_step)
        style = curve_style(steps)
        xs: list[float] = []
        ys: list[float] = []
        for i, s in enumerate(steps):
            if i and s - steps[i - 1] > 1 and style["linestyle"] != "none":  # break the line at a gap (NaN)
                xs.append(math.nan)
                ys.append(math.nan)
            xs.append(s)
            ys.append(by_step[s])
        ax.plot(xs, ys, label=k, **style)
        drawn = True
    if not drawn:
        return None
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_curves(history: list[dict[str, Any]], keys: list[str], path: Path, title: str) -> Path | None:
    """A PNG with one series per metric key (see ``curve_figure``); None when no key was logged."""
    fig = curve_figure(history, keys, title)
    if fig is None:
        return None
    fig.savefig(path, dpi=110)
    return path
