"""Saving and loading layers as .npz files."""

from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np

from ._errors import ModelFileError, ModelFileNotFoundError

FORMAT_VERSION = 1


def save(model, path):
    """Write ``model`` to ``path`` (.npz) atomically: a temporary file in the
    same directory, flushed to disk, then renamed over ``path``.  A crash
    mid-save leaves the old file (or none), never a truncated one."""
    path = os.fspath(path)
    weight, bias = model.numpy()
    arrays = {"format_version": np.array(FORMAT_VERSION), "weight": weight}
    if bias is not None:
        arrays["bias"] = bias
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".fastlin-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load(path, *, device="cpu"):
    """Read a layer written by :meth:`fastlin.Linear.save`.

    Parameters
    ----------
    path : str or path-like
    device : {"cpu", "cuda", "auto"}
        Where to put the loaded layer.

    Returns
    -------
    Linear
        With the saved dtype (float32 or float64) and bias (or none).

    Raises
    ------
    ModelFileError
        (a ValueError) The file is missing (then also a FileNotFoundError),
        truncated, not a .npz file, or not a fastlin model.
    """
    from .layer import Linear

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileNotFoundError(f"no fastlin model file at {path!r}")
    try:
        # Our own file handle: np.load leaks its handle when the zip is corrupt.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            files = set(data.files)
            if not {"format_version", "weight"} <= files:
                raise ModelFileError(f"{path!r} is a .npz file but not a fastlin model (it holds {sorted(files)})")
            version = int(data["format_version"])
            weight = data["weight"]
            bias = data["bias"] if "bias" in files else None
    except ModelFileError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"cannot read fastlin model {path!r}: {exc}") from exc
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{path!r} has format version {version}; this fastlin reads version {FORMAT_VERSION}")
    if weight.dtype not in (np.float32, np.float64):
        raise ModelFileError(f"{path!r}: weight has dtype {weight.dtype}, expected float32 or float64")
    try:
        return Linear.from_weights(weight, bias, device=device)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{path!r} holds invalid parameters: {exc}") from exc
