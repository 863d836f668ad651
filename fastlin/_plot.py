"""matplotlib helpers (optional extra ``plot``); imported only when a plot is asked for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def pyplot() -> Any:
    """Import matplotlib.pyplot, or say how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'fastlin[plot]'") from None
    if not _has_display():
        matplotlib.use("Agg")  # headless machine: render to files only
    import matplotlib.pyplot as plt

    return plt


def _has_display() -> bool:
    import os
    import sys

    return sys.platform in {"win32", "darwin"} or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def finish(fig: Any, ax: Any, path: Any, *, close: bool = False) -> Any:
    """Save the figure when a path is given; returns ``ax``.

    With ``close`` (a figure made only to be drawn here), a saved figure is
    also closed when pyplot is not interactive (a script), so that plotting
    in a loop does not pile up open figures (matplotlib warns past 20).  In
    an interactive session (IPython, Jupyter) it stays open to be shown.
    The returned Axes stays usable either way.
    """
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
        import matplotlib

        if close and not matplotlib.is_interactive():
            pyplot().close(fig)
    return ax


def plot_loss(
    loss: Sequence[float] | Any, *, ax: Any = None, log: bool = False, path: Any = None, title: str | None = None
) -> Any:
    """Draw a loss curve (step 1, 2, ... against ``loss``); see :meth:`fastlin.History.plot`."""
    plt = pyplot()
    created = ax is None
    if created:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    else:
        fig = ax.figure
    steps = range(1, len(loss) + 1)
    ax.plot(steps, loss, lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if log:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return finish(fig, ax, path, close=created)
