"""fastlin: a dense linear layer ``Y = X·Wᵀ + b`` trained by SGD on MSE,
with Numba kernels for the CPU and NVIDIA GPUs.

>>> import fastlin, numpy as np
>>> model = fastlin.Linear(5, 2, init="uniform01", seed=0)
>>> x, y = np.random.default_rng(1).random(5), np.random.default_rng(2).random(2)
>>> history = model.fit(x, y, steps=100, lr=0.05)
>>> bool(history.loss[-1] < history.loss[0])
True
"""

from . import init, schedules
from ._dispatch import cuda_available, cuda_unavailable_reason
from ._errors import DeviceError, DivergenceError, ModelFileError
from .history import History
from .layer import Gradients, Linear, load
from .losses import mse_loss
from .optim import SGD, Adam, AdamW

__version__ = "0.1.0"

__all__ = [
    "Adam",
    "AdamW",
    "DeviceError",
    "DivergenceError",
    "Gradients",
    "History",
    "Linear",
    "ModelFileError",
    "SGD",
    "cuda_available",
    "cuda_unavailable_reason",
    "init",
    "load",
    "mse_loss",
    "schedules",
    "__version__",
]
