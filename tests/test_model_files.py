"""Model files that cannot load wrong, and that are saved as ``open()`` would save them.

A saved model is a self-checking .npz (format version 2: a SHA-256 of every
array is stored in the file).  Whatever is done to the bytes of a file, load
either returns exactly the saved model or raises ModelFileError, never any
other exception; whatever is not a model file is named for what it is not.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import zipfile

import numpy as np
import pytest

import fastlin
from fastlin import _io


def _model(bias=True, dtype=np.float32, shape=(2, 3), seed=0):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=shape).astype(dtype)
    b = rng.normal(size=shape[0]).astype(dtype) if bias else None
    return fastlin.Linear.from_weights(W, b)


def _same_model(got, want):
    """Identical parameters (bit for bit), dtype and bias presence."""
    gW, gb = got.numpy()
    wW, wb = want.numpy()
    if gW.dtype != wW.dtype or gW.shape != wW.shape or (gb is None) != (wb is None):
        return False
    if gW.tobytes() != wW.tobytes():
        return False
    return gb is None or (gb.dtype == wb.dtype and gb.tobytes() == wb.tobytes())


def _load_outcome(path, want):
    """'same' or 'error' (ModelFileError); anything else fails the test."""
    try:
        got = fastlin.load(path)
    except fastlin.ModelFileError as exc:
        assert str(path) in str(exc), str(exc)  # the message names the file
        return "error"
    assert _same_model(got, want), f"a damaged file loaded as a different model: {got.numpy()} vs {want.numpy()}"
    return "same"


# ---------------------------------------------------------------------------
# the format
# ---------------------------------------------------------------------------
def test_saved_file_is_version_2_with_a_checksum_of_its_arrays(tmp_path):
    model = _model()
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path) as data:
        assert sorted(data.files) == ["bias", "format_version", "sha256", "weight"]
        assert int(data["format_version"]) == 2
        arrays = {k: data[k] for k in data.files if k != "sha256"}
        np.testing.assert_array_equal(data["sha256"], _io._digest(arrays))
    assert _same_model(fastlin.load(path), model)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_keeps_dtype_bias_and_bits(tmp_path, bias, dtype):
    model = _model(bias=bias, dtype=dtype, shape=(5, 17), seed=3)
    model.save(tmp_path / "m.npz")
    assert _same_model(fastlin.load(tmp_path / "m.npz"), model)


def test_the_checksum_sees_every_array_and_what_it_is(tmp_path):
    W = np.arange(6, dtype=np.float32).reshape(2, 3)
    base = {"format_version": np.array(2), "weight": W, "bias": np.ones(2, np.float32)}
    digest = _io._digest(base)
    variants = [
        {**base, "weight": W + np.float32(1e-7) * W},  # one value
        {**base, "weight": W.reshape(3, 2)},  # shape
        {**base, "weight": W.astype(">f4")},  # byte order
        {k: v for k, v in base.items() if k != "bias"},  # an array missing
        {**base, "format_version": np.array(1)},  # the version
        {**base, "extra": np.zeros(1)},  # an array added
    ]
    for v in variants:
        assert not np.array_equal(_io._digest(v), digest)


def test_version_1_files_are_still_read(tmp_path):
    """Files written before checksums (format version 1) load as before."""
    W = np.random.default_rng(1).normal(size=(2, 3)).astype(np.float32)
    b = np.float32([0.5, -1.5])
    np.savez(tmp_path / "v1.npz", format_version=np.array(1), weight=W, bias=b)
    got = fastlin.load(tmp_path / "v1.npz")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.weight, W)
    np.testing.assert_array_equal(got.bias, b)
    np.savez_compressed(tmp_path / "v1c.npz", format_version=np.array(1), weight=W.astype(np.float64))
    got = fastlin.load(tmp_path / "v1c.npz")
    assert got.dtype == np.float64 and not got.has_bias


def test_a_checksum_is_verified_whatever_the_version_says(tmp_path):
    """A damaged version field cannot switch the check off."""
    model = _model()
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["format_version"] = np.array(1)  # checksum still that of version 2
    np.savez(tmp_path / "v1-with-sum.npz", **arrays)
    with pytest.raises(fastlin.ModelFileError, match="checksum"):
        fastlin.load(tmp_path / "v1-with-sum.npz")


@pytest.mark.parametrize("order", [">", "<"])
@pytest.mark.parametrize("version", [1, 2])
def test_float32_in_either_byte_order_loads_as_float32(tmp_path, order, version):
    W = np.random.default_rng(2).normal(size=(3, 4)).astype(order + "f4")
    b = np.float32([1, 2, 3]).astype(order + "f4")
    arrays = {"format_version": np.array(version), "weight": W, "bias": b}
    if version == 2:
        arrays["sha256"] = _io._digest(arrays)
    np.savez(tmp_path / "m.npz", **arrays)
    got = fastlin.load(tmp_path / "m.npz")
    assert got.dtype == np.float32 and got.weight.dtype == np.float32
    np.testing.assert_array_equal(got.weight, W.astype(np.float32))
    np.testing.assert_array_equal(got.bias, b.astype(np.float32))


# ---------------------------------------------------------------------------
# corruption: every byte, every length
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("bias,dtype", [(True, np.float32), (False, np.float64)])
def test_every_damaged_byte_and_every_truncation_loads_the_same_model_or_raises(tmp_path, bias, dtype):
    model = _model(bias=bias, dtype=dtype)
    good = tmp_path / "good.npz"
    model.save(good)
    data = good.read_bytes()
    path = tmp_path / "bad.npz"
    outcomes = {"same": 0, "error": 0}
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 0xFF
        path.write_bytes(bytes(damaged))
        outcomes[_load_outcome(path, model)] += 1
    for n in range(len(data)):
        path.write_bytes(data[:n])
        assert _load_outcome(path, model) == "error", n  # a truncated file never loads
    # Most flips hit something that is checked; some (zip timestamps, the
    # "made by" fields) change nothing that is read.
    assert outcomes["error"] > len(data) // 2 and outcomes["same"] > 0, outcomes


def test_every_single_bit_flip_loads_the_same_model_or_raises(tmp_path):
    """Bit flips reach what XOR 0xFF cannot: '<f4' -> '>f4', '3' -> '2' in a shape, ..."""
    model = _model()
    good = tmp_path / "good.npz"
    model.save(good)
    data = good.read_bytes()
    path = tmp_path / "bad.npz"
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 1 << (i % 8)
        path.write_bytes(bytes(damaged))
        _load_outcome(path, model)
    for i in range(0, len(data), 11):  # and the other bits of a sample of bytes
        for bit in range(8):
            damaged = bytearray(data)
            damaged[i] ^= 1 << bit
            path.write_bytes(bytes(damaged))
            _load_outcome(path, model)


def test_a_damaged_directory_entry_cannot_drop_the_bias(tmp_path):
    """The case seen on main before checksums: a flip in the zip's central
    directory renamed 'bias.npy', and the model loaded without its bias."""
    model = _model()
    model.save(tmp_path / "m.npz")
    data = bytearray((tmp_path / "m.npz").read_bytes())
    cd = data.rindex(b"bias.npy")  # the central directory comes last
    data[cd] ^= 0x20  # 'b' -> 'B'
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    with pytest.raises(fastlin.ModelFileError, match="bad.npz"):
        fastlin.load(tmp_path / "bad.npz")


# ---------------------------------------------------------------------------
# files that are not models: each named for what it is not
# ---------------------------------------------------------------------------
def _not_models(tmp_path):
    """(path, fragment of the message)."""
    W = np.ones((2, 3))
    cases = []

    def add(name, fragment):
        cases.append((tmp_path / name, fragment))

    np.save(tmp_path / "array.npy", W)
    add("array.npy", ".npy file, not a fastlin model")
    (tmp_path / "notes.txt").write_text("weight = [[1, 2, 3]]\n")
    add("notes.txt", "text file, not a fastlin model")
    (tmp_path / "noise.bin").write_bytes(bytes(range(256)))
    add("noise.bin", "neither a .npz (zip) archive nor a .npy file")
    (tmp_path / "empty.npz").write_bytes(b"")
    add("empty.npz", "empty (0 bytes)")
    (tmp_path / "folder.npz").mkdir()
    add("folder.npz", "is a directory")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.npz")
        add("pipe.npz", "not a regular file")
    np.savez(tmp_path / "other.npz", x=W)
    add("other.npz", "not a fastlin model (it holds ['x'])")
    np.savez(tmp_path / "none.npz")
    add("none.npz", "not a fastlin model (it holds [])")
    np.savez(tmp_path / "version-array.npz", format_version=np.array([1, 2]), weight=W)
    add("version-array.npz", "format_version must be a single integer")
    np.savez(tmp_path / "version-string.npz", format_version=np.array("2"), weight=W)
    add("version-string.npz", "format_version must be a single integer")
    np.savez(tmp_path / "version-float.npz", format_version=np.array(2.0), weight=W)
    add("version-float.npz", "format_version must be a single integer")
    np.savez(tmp_path / "version-3.npz", format_version=np.array(3), weight=W)
    add("version-3.npz", "format version 3 (written by a newer fastlin")
    np.savez(tmp_path / "v2-no-sum.npz", format_version=np.array(2), weight=W)
    add("v2-no-sum.npz", "checksum")
    np.savez(tmp_path / "v2-bad-sum.npz", format_version=np.array(2), weight=W, sha256=np.zeros(32, np.uint8))
    add("v2-bad-sum.npz", "checksum does not match")
    np.savez(tmp_path / "v2-sum-shape.npz", format_version=np.array(2), weight=W, sha256=np.zeros(3))
    add("v2-sum-shape.npz", "checksum does not match")
    with zipfile.ZipFile(tmp_path / "pickled.npz", "w") as z:
        np.save(z.open("format_version.npy", "w"), np.array(1))
        np.save(z.open("weight.npy", "w"), np.array([object()]), allow_pickle=True)
    add("pickled.npz", "object array")
    with zipfile.ZipFile(tmp_path / "text-member.npz", "w") as z:
        np.save(z.open("format_version.npy", "w"), np.array(1))
        z.writestr("weight.npy", "not an array")
    add("text-member.npz", "damaged")
    npy = io.BytesIO()
    np.save(npy, W)
    with zipfile.ZipFile(tmp_path / "twice.npz", "w") as z:
        z.writestr("weight.npy", npy.getvalue())
        with pytest.warns(UserWarning, match="Duplicate name"):
            z.writestr("weight.npy", npy.getvalue())
        np.save(z.open("format_version.npy", "w"), np.array(1))
    add("twice.npz", "twice")
    huge = io.BytesIO()  # a header that claims 80 GB, followed by 48 bytes
    np.lib.format.write_array_header_1_0(huge, {"descr": "<f8", "fortran_order": False, "shape": (100_000, 100_000)})
    with zipfile.ZipFile(tmp_path / "huge-header.npz", "w") as z:
        np.save(z.open("format_version.npy", "w"), np.array(1))
        z.writestr("weight.npy", huge.getvalue() + W.tobytes())
    add("huge-header.npz", "declares 80000000000 bytes")
    np.savez(tmp_path / "int-weight.npz", format_version=np.array(1), weight=W.astype(np.int64))
    add("int-weight.npz", "dtype int64")
    np.savez(tmp_path / "1d-weight.npz", format_version=np.array(1), weight=np.ones(3))
    add("1d-weight.npz", "invalid parameters")
    np.savez(tmp_path / "nan.npz", format_version=np.array(1), weight=np.full((2, 2), np.nan))
    add("nan.npz", "NaN")
    np.savez(tmp_path / "bias-shape.npz", format_version=np.array(1), weight=W, bias=np.ones(3))
    add("bias-shape.npz", "bias must have shape")
    np.savez(
        tmp_path / "f32-overflow.npz", format_version=np.array(1), weight=W.astype(np.float32), bias=np.full(2, 1e39)
    )
    add("f32-overflow.npz", "too large for float32")
    return cases


def test_files_that_are_not_models_say_what_they_are_not(tmp_path):
    for path, fragment in _not_models(tmp_path):
        with pytest.raises(fastlin.ModelFileError) as info:
            fastlin.load(path)
        message = str(info.value)
        assert fragment in message, (path.name, message)
        assert path.name in message, message
        assert "allow_pickle" not in message, message  # numpy's wording for a text file
        assert not isinstance(info.value, FileNotFoundError), path.name


def test_a_missing_file_is_model_file_not_found(tmp_path):
    with pytest.raises(fastlin.ModelFileError, match="no fastlin model file") as info:
        fastlin.load(tmp_path / "nope.npz")
    assert isinstance(info.value, FileNotFoundError)


def test_an_unreadable_file_is_a_model_file_error(tmp_path, monkeypatch):
    fastlin.Linear(2, 2).save(tmp_path / "m.npz")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "m.npz"))

    monkeypatch.setattr(_io, "open", denied, raising=False)  # only load's own open()
    with pytest.raises(fastlin.ModelFileError, match="Permission denied"):
        fastlin.load(tmp_path / "m.npz")


def test_bad_arguments_to_load_are_argument_errors_not_file_errors(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="device must be one of") as info:
        fastlin.load(tmp_path / "junk.npz", device="gpu")
    assert not isinstance(info.value, fastlin.ModelFileError)
    with pytest.raises(TypeError, match="path must be"):
        fastlin.load(3.5)


def test_paths_may_be_str_bytes_or_pathlike(tmp_path):
    model = _model()
    for path in (str(tmp_path / "a.npz"), os.fsencode(tmp_path / "b.npz"), tmp_path / "c.npz"):
        model.save(path)
        assert _same_model(fastlin.load(path), model)


# ---------------------------------------------------------------------------
# permissions: as open(path, "w") would make them; still atomic
# ---------------------------------------------------------------------------
@pytest.fixture
def umask():
    """Set the process umask in a test; restored afterwards."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002, 0o000], ids=oct)
def test_a_new_file_gets_0666_minus_the_umask(tmp_path, umask, mask):
    umask(mask)
    fastlin.Linear(2, 2).save(tmp_path / "m.npz")
    with open(tmp_path / "reference", "w"):
        pass
    assert _mode(tmp_path / "m.npz") == 0o666 & ~mask == _mode(tmp_path / "reference")
    assert sorted(os.listdir(tmp_path)) == ["m.npz", "reference"]  # no temporary file left


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o600, 0o664], ids=oct)
def test_saving_over_a_file_keeps_its_mode_and_replaces_it_atomically(tmp_path, umask, mode):
    path = tmp_path / "m.npz"
    _model(seed=1).save(path)
    os.chmod(path, mode)
    inode = os.stat(path).st_ino
    umask(0o077)  # would give 0o600 to a new file
    second = _model(seed=2)
    second.save(path)
    assert _mode(path) == mode
    assert os.stat(path).st_ino != inode  # renamed over, not rewritten in place
    assert _same_model(fastlin.load(path), second)
    assert os.listdir(tmp_path) == ["m.npz"]


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="POSIX modes; root may write anything")
def test_a_read_only_file_is_not_replaced(tmp_path):
    path = tmp_path / "m.npz"
    first = _model(seed=1)
    first.save(path)
    os.chmod(path, 0o444)
    with pytest.raises(PermissionError):
        _model(seed=2).save(path)
    assert _same_model(fastlin.load(path), first)
    assert os.listdir(tmp_path) == ["m.npz"]
