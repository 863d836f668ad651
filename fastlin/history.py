"""What a fit returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
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
    """

    loss: np.ndarray
    seconds: float
    seed: int | None = None
    stopped_early: bool = field(default=False)

    def __len__(self):
        return len(self.loss)

    @property
    def steps(self):
        """Number of steps taken."""
        return len(self.loss)

    def plot(self, *, ax=None, log=False, path=None, title="training loss"):
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
