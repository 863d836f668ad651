"""What a fit returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._typing import StrPath

# History.loss_grew: a last loss this many times the first means the fit
# moved away from the minimum (typically a learning rate that is too large).
LOSS_GREW_FACTOR = 10.0


@dataclass(repr=False)
class History:
    """The record of a :meth:`fastlin.Linear.fit` call.

    Attributes
    ----------
    loss : ndarray of float64, shape (steps,)
        The loss of every step, measured on that step's batch *before* its
        update, reduced as the fit's ``reduction`` says.
    seconds : float
        Wall-clock time of the training loop (validation excluded).
    seed : int or None
        The shuffle seed used (drawn at random when a shuffled fit was given
        none), so a shuffled fit can be repeated exactly; None when nothing
        was shuffled and no seed was given.
    stopped_early : bool
        True when the fit's ``callback`` asked it to stop before ``steps``.
    lr : ndarray of float64, shape (steps,)
        The learning rate of every step (the optimiser's ``lr`` moved by its
        schedule, see :mod:`fastlin.schedules`).

    ``repr(history)`` is one line: the number of steps, the first and last
    loss and the time, e.g. ``History(100 steps, loss 2.17 -> 4.2e-11, 0.00011 s)``.
    """

    loss: NDArray[np.float64]
    seconds: float
    seed: int | None = None
    stopped_early: bool = field(default=False)
    lr: NDArray[np.float64] = field(default_factory=lambda: np.empty(0, dtype=np.float64))

    def __len__(self) -> int:
        return len(self.loss)

    def __repr__(self) -> str:
        n = len(self.loss)
        if n == 0:
            losses = "no loss"
        else:
            losses = f"loss {float(self.loss[0]):.6g} -> {float(self.loss[-1]):.6g}"
        extra = ", stopped early" if self.stopped_early else ""
        return f"History({n} step{'' if n == 1 else 's'}, {losses}, {self.seconds:.3g} s{extra})"

    @property
    def steps(self) -> int:
        """Number of steps taken."""
        return len(self.loss)

    @property
    def loss_grew(self) -> bool:
        """True when the last step's loss is more than ten times the first's.

        Gradient descent with a small enough learning rate never ends far
        above where it started, so this almost always means that the learning
        rate is too large (the loss grows geometrically).  A NaN loss never
        reaches a History (``fit`` raises :class:`fastlin.DivergenceError`).
        False for fewer than two steps.
        """
        if len(self.loss) < 2:
            return False
        first, last = float(self.loss[0]), float(self.loss[-1])
        return last > LOSS_GREW_FACTOR * first and last > 0.0

    def plot(
        self,
        *,
        ax: Any = None,
        log: bool = False,
        path: StrPath | None = None,
        title: str | None = "training loss",
    ) -> Any:
        """Draw the loss curve with matplotlib (``pip install 'fastlin[plot]'``).

        The x axis is the step (1-based), the y axis ``self.loss``.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Where to draw; a new figure is made when omitted.
        log : bool, default False
            Use a logarithmic loss axis.
        path : str or path-like, optional
            Also save the figure there (PNG, SVG, ... by extension).  A figure
            made here is then closed when pyplot is not interactive (in a
            script), so plotting in a loop does not pile up open figures.
        title : str or None, default "training loss"
            The axes' title (None for none).

        Returns
        -------
        matplotlib.axes.Axes
            The Axes drawn on.

        Raises
        ------
        ImportError
            matplotlib is not installed.
        """
        from ._plot import plot_loss

        return plot_loss(self.loss, ax=ax, log=log, path=path, title=title)
