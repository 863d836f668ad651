"""Saving and loading layers as .npz files.

A model file is a numpy ``.npz`` archive (an uncompressed zip of ``.npy``
arrays) holding:

``format_version``  int64 scalar, 2 (files written before checksums: 1)
``weight``          (out_features, in_features), float32 or float64
``bias``            (out_features,), same dtype; absent for a layer without bias
``sha256``          (32,) uint8, version 2 only: SHA-256 over every other
                    entry's name, dtype (with byte order), shape and bytes

The checksum makes a file that cannot load wrong: a damaged byte anywhere
either changes nothing that is read (the saved model loads exactly) or makes
:func:`load` raise :class:`fastlin.ModelFileError`.  Version-1 files (no
checksum) are still read; for them only the zip's own CRC-32 of each array
guards the contents, and a damaged directory can go unnoticed.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
from typing import NamedTuple

import numpy as np

from . import _dispatch
from ._errors import ModelFileError, ModelFileNotFoundError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
CHECKSUM_KEY = "sha256"
_DIGEST_SALT = b"fastlin model file\n"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a member first, or an empty archive
_NPY_MAGIC = b"\x93NUMPY"


def _digest(arrays):
    """SHA-256 over ``arrays`` (a dict name -> ndarray), as (32,) uint8.

    Each entry adds its name, dtype string (byte order included), shape and
    C-order bytes, length-prefixed so that no two different sets of arrays
    hash the same input.  Entries are taken in sorted order of names.
    """
    import hashlib  # here, not at import fastlin: it costs a few ms to load

    h = hashlib.sha256(_DIGEST_SALT)
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        head = f"{key}\0{a.dtype.str}\0{a.shape}\0{a.nbytes}".encode()
        h.update(len(head).to_bytes(8, "little"))
        h.update(head)
        if a.nbytes:
            h.update(a.reshape(-1).view(np.uint8))
    return np.frombuffer(h.digest(), dtype=np.uint8).copy()


# ----------------------------------------------------------------------
# save
# ----------------------------------------------------------------------
def _create_temp(directory):
    """A new, empty temporary file in ``directory``: ``(fd, path)``.

    Made with ``os.open(..., 0o666)`` so that the kernel applies the umask
    (and any default ACL) exactly as ``open(path, "w")`` would; mkstemp's
    0o600 would make a shared model unreadable to others.
    """
    import secrets

    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".fastlin-{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {directory!r}")


def _fsync_directory(directory):
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ModelArrays(NamedTuple):
    """What a model file holds: the host parameters (``bias`` None without bias)."""

    weight: np.ndarray
    bias: np.ndarray | None


def save(model, path):
    """Write ``model`` (a :class:`ModelArrays`) to ``path`` (.npz, format version 2) atomically.

    The file is written under a temporary name in the same directory, flushed
    to disk, then renamed over ``path``: a crash mid-save leaves the old file
    (or none), never a truncated one.  Permissions follow ``open(path, "w")``:
    a new file gets ``0o666 & ~umask``; a file saved over keeps its mode, and
    one that is not writable is refused with PermissionError.  (The owner of
    the new file is the saving user.)
    """
    path = os.fsdecode(os.fspath(path))  # bytes paths too (the temporary name is a str)
    weight, bias = model
    arrays = {"format_version": np.array(FORMAT_VERSION, dtype=np.int64), "weight": weight}
    if bias is not None:
        arrays["bias"] = bias
    arrays[CHECKSUM_KEY] = _digest(arrays)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        old_mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        old_mode = None
    if old_mode is not None and os.path.isfile(path) and not os.access(path, os.W_OK):
        raise PermissionError(13, "Permission denied (the model file is read-only)", path)
    fd, tmp = _create_temp(directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            if old_mode is not None:
                if hasattr(os, "fchmod"):
                    os.fchmod(f.fileno(), old_mode)
                else:  # Windows
                    os.chmod(tmp, old_mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


# ----------------------------------------------------------------------
# load
# ----------------------------------------------------------------------
def _looks_like_text(head):
    """True when the first bytes of a file read as printable UTF-8 (a character cut at the end is allowed)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:
            return False
        text = head[: exc.start].decode("utf-8")
    return bool(text) and all(c.isprintable() or c in "\t\r\n" for c in text)


def _read_npy(zf, info, archive_size):
    """One archive member -> ndarray, checking its size before allocating.

    Refuses object arrays (they need pickle) and dtypes a model never holds
    whose size is not plain (subarrays, zero-size items).
    """
    if info.compress_type == zipfile.ZIP_STORED and info.file_size > archive_size:
        raise ValueError(f"entry {info.filename!r} claims {info.file_size} bytes, more than the whole file")
    with zf.open(info) as m:
        version = np.lib.format.read_magic(m)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(m)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(m)
        else:
            raise ValueError(f"entry {info.filename!r} has .npy version {version}, which fastlin never writes")
        if dtype.hasobject:
            raise ModelFileError("an object array (it would need pickle, which fastlin never uses)")
        if dtype.itemsize == 0 or dtype.subdtype is not None:
            raise ValueError(f"entry {info.filename!r} has dtype {dtype}, which a fastlin model never holds")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if m.tell() + nbytes != info.file_size:
            raise ValueError(
                f"entry {info.filename!r} declares {nbytes} bytes of data but holds {info.file_size - m.tell()}"
            )
        try:
            buf = np.empty(nbytes, dtype=np.uint8)
        except MemoryError:
            raise ModelFileError(f"too large to read: {nbytes} bytes could not be allocated") from None
        view, got = memoryview(buf), 0
        while got < nbytes:
            n = m.readinto(view[got:])
            if not n:
                raise EOFError(f"entry {info.filename!r} ends after {got} of {nbytes} bytes of data")
            got += n
        if m.read(1):  # also makes zipfile check the CRC-32 at the end
            raise ValueError(f"entry {info.filename!r} holds more data than its header declares")
    return buf.view(dtype).reshape(shape, order="F" if fortran else "C")


def _read_archive(path):
    """The arrays of the .npz at ``path`` as a dict, or ModelFileError saying what the file is not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelFileNotFoundError(f"no fastlin model file at {path!r}") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read fastlin model {path!r}: {exc}") from exc
    if stat.S_ISDIR(st.st_mode):
        raise ModelFileError(f"cannot read fastlin model {path!r}: it is a directory, not a fastlin model (.npz) file")
    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(f"cannot read fastlin model {path!r}: it is not a regular file (a device, pipe or socket)")
    if st.st_size == 0:
        raise ModelFileError(
            f"cannot read fastlin model {path!r}: the file is empty (0 bytes), not a fastlin model (.npz) file"
        )
    arrays = {}
    try:
        with open(path, "rb") as f:
            head = f.read(512)
            if head.startswith(_NPY_MAGIC):
                raise ModelFileError(
                    f"cannot read fastlin model {path!r}: it is a single-array .npy file, not a fastlin model "
                    "(an .npz archive written by Linear.save)"
                )
            if not head.startswith(_ZIP_MAGICS):
                what = "a text file" if _looks_like_text(head) else "neither a .npz (zip) archive nor a .npy file"
                raise ModelFileError(
                    f"cannot read fastlin model {path!r}: it is {what}, not a fastlin model (.npz) file"
                )
            f.seek(0)
            with zipfile.ZipFile(f) as zf:
                infos = zf.infolist()
                keys = [i.filename.removesuffix(".npy") for i in infos]
                if len(set(keys)) != len(keys):
                    raise ModelFileError(
                        f"cannot read fastlin model {path!r}: the archive lists an entry twice (damaged)"
                    )
                if not {"format_version", "weight"} <= set(keys):
                    raise ModelFileError(f"{path!r} is a .npz file but not a fastlin model (it holds {sorted(keys)})")
                for key, info in zip(keys, infos):
                    try:
                        arrays[key] = _read_npy(zf, info, st.st_size)
                    except ModelFileError as exc:
                        raise ModelFileError(f"cannot read fastlin model {path!r}: entry {key!r} is {exc}") from None
    except ModelFileError:
        raise
    except Exception as exc:  # zipfile, zlib and numpy's header parser raise many kinds
        raise ModelFileError(
            f"cannot read fastlin model {path!r}: the file is damaged ({type(exc).__name__}: {exc})"
        ) from exc
    return arrays


def _model_arrays(path, arrays):
    """Check the version and checksum; return ``(weight, bias or None)``."""
    version = arrays["format_version"]
    if version.shape != () or version.dtype.kind not in "iu":
        raise ModelFileError(
            f"{path!r}: format_version must be a single integer, got an array of dtype {version.dtype} and shape {version.shape}"
        )
    version = int(version)
    if version not in READABLE_VERSIONS:
        newer = " (written by a newer fastlin: upgrade to read it)" if version > FORMAT_VERSION else ""
        readable = " and ".join(map(str, READABLE_VERSIONS))
        raise ModelFileError(f"{path!r} has format version {version}{newer}; this fastlin reads versions {readable}")
    stored = arrays.pop(CHECKSUM_KEY, None)
    if stored is None and version >= 2:
        raise ModelFileError(f"{path!r} is damaged: format version {version} stores a checksum, and it is missing")
    # A checksum is verified whatever the version says, so a damaged version
    # field cannot switch the check off.
    if stored is not None and not (
        stored.dtype == np.uint8 and stored.shape == (32,) and np.array_equal(stored, _digest(arrays))
    ):
        raise ModelFileError(
            f"{path!r} is damaged: its SHA-256 checksum does not match its contents (format version, weight, bias)"
        )
    weight = arrays["weight"]
    if weight.dtype.kind != "f" or weight.dtype.itemsize not in (4, 8):
        raise ModelFileError(f"{path!r}: weight has dtype {weight.dtype}, expected float32 or float64")
    return weight, arrays.get("bias")


def read(path, *, device="cpu"):
    """The :class:`ModelArrays` of a file written by :meth:`fastlin.Linear.save`.

    Checks ``path`` and ``device`` first (a bad device is not a bad file),
    then the file: the errors are those :func:`fastlin.load` documents.
    The layer builds itself from the arrays (:func:`fastlin.layer.load`).
    """
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"path must be a str, bytes or os.PathLike, got {type(path).__name__}") from None
    if device != "auto":
        _dispatch.resolve(device)  # a bad device is not a bad file: say so first
    return ModelArrays(*_model_arrays(path, _read_archive(path)))
