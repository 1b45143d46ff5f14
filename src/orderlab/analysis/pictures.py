"""Pictures of a Plan: the (H, W) step map with group boundaries. Matplotlib's Agg canvas, no pyplot, no display."""

from __future__ import annotations

import os

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from orderlab.data.atomic import atomic_savefig
from orderlab.plan import Plan

__all__ = ["plot_plan", "save_figure"]

# Step numbers are written into the cells only while they stay legible.
_ANNOTATE_MAX_SIDE = 16
_KNOWN_COLOUR = (0.75, 0.75, 0.75, 1.0)


def plot_plan(plan: Plan, path_or_ax: str | os.PathLike | Axes, title: str | None = None) -> str | Axes:
    """Draw the step map of ``plan``: colour = step index, black edges between cells of different groups.

    Known cells (``plan.num_known``) are grey. Grids of at most 16 x 16 also get the step number in every cell.

    Args:
        plan: the Plan to draw.
        path_or_ax: a PNG path (written atomically; parent folders are created) or a matplotlib Axes to draw on.
        title: optional title; default ``"HxW, T=..."``.

    Returns:
        The path written, or the Axes drawn on.
    """
    if isinstance(path_or_ax, Axes):
        _draw(plan, path_or_ax, title)
        return path_or_ax
    side = max(plan.height, plan.width)
    scale = min(8.0, max(3.0, side * 0.35))  # inches: tiny grids still get a readable colour bar
    fig = Figure(figsize=(scale * plan.width / side + 1.5, scale * plan.height / side + 0.8), dpi=100)
    FigureCanvasAgg(fig)  # the Agg canvas directly, not pyplot: no display, no global backend switch
    ax = fig.add_subplot()
    _draw(plan, ax, title)
    fig.tight_layout()
    return save_figure(fig, path_or_ax)


def save_figure(fig: Figure, path: str | os.PathLike) -> str:
    """Write ``fig`` as a PNG atomically: to a temporary name in the same folder, then ``os.replace``.

    Readers (TensorBoard, a browser, a concurrent run) therefore never see a half-written file.
    """
    return atomic_savefig(fig, path, format="png")


def _draw(plan: Plan, ax: Axes, title: str | None) -> None:
    h, w = plan.height, plan.width
    steps = plan.step_map().numpy()  # (H, W) step index, -1 for known cells
    t = plan.num_steps
    # one colour per step; known cells (-1) sit below step 0 and get the "under" colour
    cmap = ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0, 1, max(t, 2)))).with_extremes(
        under=_KNOWN_COLOUR)
    im = ax.imshow(steps, cmap=cmap, vmin=-0.5, vmax=max(t, 2) - 0.5, interpolation="nearest")
    ax.add_collection(LineCollection(_boundaries(steps), colors="black", linewidths=1.2 if max(h, w) <= 32 else 0.6))
    if max(h, w) <= _ANNOTATE_MAX_SIDE:
        for r in range(h):
            for c in range(w):
                s = int(steps[r, c])
                # dark text on the bright end of viridis, light text on the dark end
                colour = "black" if s < 0 or s >= 0.6 * t else "white"
                ax.text(c, r, "K" if s < 0 else str(s), ha="center", va="center", color=colour,
                        fontsize=7 if max(h, w) > 8 else 9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title if title is not None else f"{h}x{w}, T={t}", fontsize=10)
    bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, extend="min" if plan.num_known else "neither")
    bar.set_label("step")
    bar.locator = MaxNLocator(nbins=6, integer=True)  # steps are integers: no 2.5 on the bar


def _boundaries(steps: np.ndarray) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Line segments (in imshow data coordinates) on every cell edge that separates two different groups."""
    h, w = steps.shape
    segs = []
    rr, cc = np.nonzero(steps[:, 1:] != steps[:, :-1])  # vertical edges between (r, c) and (r, c + 1)
    segs += [((c + 0.5, r - 0.5), (c + 0.5, r + 0.5)) for r, c in zip(rr.tolist(), cc.tolist())]
    rr, cc = np.nonzero(steps[1:, :] != steps[:-1, :])  # horizontal edges between (r, c) and (r + 1, c)
    segs += [((c - 0.5, r + 0.5), (c + 0.5, r + 0.5)) for r, c in zip(rr.tolist(), cc.tolist())]
    return segs
