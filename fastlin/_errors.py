"""fastlin's exception types."""

from __future__ import annotations


class DivergenceError(FloatingPointError, ValueError):
    """Training produced a NaN/Inf loss or would have made a weight NaN/Inf.

    Raised by ``Linear.step`` and ``Linear.fit``.  The model keeps the last
    finite weights (the failing update is never written).  Attributes:
    ``step`` (1-based number of the failing step), ``loss`` (its loss, maybe
    NaN) and ``history`` (a :class:`fastlin.History` of the steps that
    succeeded, or None for a single ``step`` call).
    """

    def __init__(self, message, *, step=None, loss=None, history=None):
        super().__init__(message)
        self.step = step
        self.loss = loss
        self.history = history


class DeviceError(RuntimeError):
    """The requested device cannot be used (no GPU, no driver, no numba-cuda)."""


class ModelFileError(ValueError):
    """A file given to :func:`fastlin.load` is missing, unreadable or not a fastlin model."""


class ModelFileNotFoundError(ModelFileError, FileNotFoundError):
    """The file given to :func:`fastlin.load` does not exist."""
