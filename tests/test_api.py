"""The layer's construction, initialisers, saving/loading, the demo, imports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import fastlin
from fastlin import init


# ---------------------------------------------------------------------------
# construction and initialisers
# ---------------------------------------------------------------------------
def test_defaults_follow_torch_linear():
    model = fastlin.Linear(5, 2, seed=0)
    assert model.weight.shape == (2, 5) and model.bias.shape == (2,)
    assert model.dtype == np.float32 and model.device == "cpu"
    assert isinstance(model.weight, np.ndarray) and model.has_bias
    assert repr(model) == "Linear(in_features=5, out_features=2, bias=True, dtype=float32, device='cpu')"
    bound = 1 / np.sqrt(5)
    assert np.abs(model.weight).max() <= bound and np.abs(model.bias).max() <= bound


def test_seeds_make_initialisation_reproducible_across_dtypes():
    a = fastlin.Linear(7, 3, init="kaiming_normal", seed=42)
    b = fastlin.Linear(7, 3, init="kaiming_normal", seed=42, dtype=np.float64)
    c = fastlin.Linear(7, 3, init="kaiming_normal", seed=43)
    np.testing.assert_array_equal(a.weight, b.weight.astype(np.float32))
    assert not np.array_equal(a.weight, c.weight)
    gen = np.random.default_rng(5)
    d = fastlin.Linear(7, 3, seed=gen)
    assert not np.array_equal(d.weight, fastlin.Linear(7, 3, seed=gen).weight)


@pytest.mark.parametrize(
    "name, w_std, bias_zero",
    [
        ("kaiming_uniform", np.sqrt(2 / 400), True),
        ("kaiming_normal", np.sqrt(2 / 400), True),
        ("glorot_uniform", np.sqrt(2 / (400 + 300)), True),
        ("glorot_normal", np.sqrt(2 / (400 + 300)), True),
        ("torch", 1 / np.sqrt(400) / np.sqrt(3), False),
        ("uniform01", np.sqrt(1 / 12), False),
    ],
)
def test_initialiser_statistics(name, w_std, bias_zero):
    model = fastlin.Linear(400, 300, init=name, seed=1, dtype=np.float64)
    W, b = model.weight, model.bias
    assert abs(W.std() / w_std - 1) < 0.02
    if name == "uniform01":
        assert 0 <= W.min() and W.max() < 1 and abs(W.mean() - 0.5) < 0.01
    else:
        assert abs(W.mean()) < 0.05 * w_std
    if name.endswith("uniform"):
        bound = w_std * np.sqrt(3)
        assert np.abs(W).max() <= bound and np.abs(W).max() > 0.99 * bound
    assert (b == 0).all() if bias_zero else b.std() > 0


def test_zeros_initialiser_and_custom_callable():
    assert not fastlin.Linear(3, 2, init="zeros").weight.any()
    model = fastlin.Linear(3, 2, init=lambda rng, o, i: (np.full((o, i), 2.0), np.arange(o)))
    assert (model.weight == 2).all() and model.bias.tolist() == [0.0, 1.0]
    assert set(init.INITIALIZERS) == {
        "uniform01",
        "kaiming_uniform",
        "kaiming_normal",
        "glorot_uniform",
        "glorot_normal",
        "torch",
        "zeros",
    }


def test_no_bias_layer():
    model = fastlin.Linear(4, 2, bias=False, seed=0)
    assert model.bias is None and not model.has_bias
    X = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    np.testing.assert_allclose(model(X), X.astype(np.float64) @ model.weight.T.astype(np.float64), rtol=1e-5, atol=1e-6)
    model.step(X, np.ones((6, 2)), fastlin.SGD(0.1, momentum=0.9, weight_decay=0.1))
    assert model.bias is None


def test_from_weights_copies_and_takes_the_dtype():
    W = np.arange(6, dtype=np.float32).reshape(2, 3)
    model = fastlin.Linear.from_weights(W, [1, 2])
    assert model.dtype == np.float32 and model.bias.dtype == np.float32
    W[0, 0] = 100
    assert model.weight[0, 0] == 0  # a copy, not a view
    assert fastlin.Linear.from_weights(W.astype(np.float64)).dtype == np.float64
    assert fastlin.Linear.from_weights([[1, 2]]).dtype == np.float64  # ints -> float64


def test_copy_numpy_and_to_cpu():
    model = fastlin.Linear(3, 2, seed=0)
    clone = model.copy()
    clone.weight[0, 0] += 1
    assert clone.weight[0, 0] != model.weight[0, 0]
    W, b = model.numpy()
    W[0, 0] = 99
    assert model.weight[0, 0] != 99
    assert model.to("cpu") is model
    assert model.to("auto").device == "cpu"  # 8 parameters: far below the GPU threshold


# ---------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_save_load_round_trip(tmp_path, dtype, bias):
    model = fastlin.Linear(6, 3, bias=bias, dtype=dtype, seed=2)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = fastlin.load(path)
    assert loaded.dtype == dtype and loaded.has_bias == bias
    np.testing.assert_array_equal(loaded.weight, model.weight)
    if bias:
        np.testing.assert_array_equal(loaded.bias, model.bias)
    assert os.listdir(tmp_path) == ["model.npz"]  # no temporary file left behind


def test_save_replaces_atomically_and_keeps_the_name(tmp_path):
    path = tmp_path / "weights.bin"
    fastlin.Linear(2, 2, seed=1).save(path)
    second = fastlin.Linear(2, 2, seed=2)
    second.save(str(path))
    assert os.listdir(tmp_path) == ["weights.bin"]
    np.testing.assert_array_equal(fastlin.load(path).weight, second.weight)


def test_failed_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    first = fastlin.Linear(2, 2, seed=1)
    first.save(path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        fastlin.Linear(2, 2, seed=2).save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["m.npz"]
    np.testing.assert_array_equal(fastlin.load(path).weight, first.weight)


def test_load_rejects_missing_and_corrupt_files(tmp_path):
    with pytest.raises(fastlin.ModelFileError, match="no fastlin model file") as info:
        fastlin.load(tmp_path / "nope.npz")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)

    good = tmp_path / "good.npz"
    fastlin.Linear(4, 2, seed=0).save(good)
    data = good.read_bytes()

    cases = {
        "garbage.npz": b"this is not a zip file at all",
        "truncated.npz": data[: len(data) // 2],
        "empty.npz": b"",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    np.savez(tmp_path / "other.npz", x=np.ones(3))
    np.savez(tmp_path / "version.npz", format_version=np.array(99), weight=np.ones((2, 2)))
    np.savez(tmp_path / "dtype.npz", format_version=np.array(1), weight=np.ones((2, 2), dtype=np.int64))
    np.savez(tmp_path / "shape.npz", format_version=np.array(1), weight=np.ones((2, 2)), bias=np.ones(3))
    np.savez(tmp_path / "nan.npz", format_version=np.array(1), weight=np.full((2, 2), np.nan))
    with zipfile.ZipFile(tmp_path / "pickle.npz", "w") as z:  # object arrays need pickle: refused
        np.save(z.open("weight.npy", "w"), np.array([object()]), allow_pickle=True)
    expected = {
        "garbage.npz": "cannot read",
        "truncated.npz": "cannot read",
        "empty.npz": "cannot read",
        "other.npz": "not a fastlin model",
        "version.npz": "format version 99",
        "dtype.npz": "dtype int64",
        "shape.npz": "bias must have shape",
        "nan.npz": "NaN",
        "pickle.npz": "not a fastlin model",
    }
    for name, fragment in expected.items():
        with pytest.raises(fastlin.ModelFileError, match=fragment):
            fastlin.load(tmp_path / name)


# ---------------------------------------------------------------------------
# the demo and imports
# ---------------------------------------------------------------------------
def _run(args, **env):
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **env}, check=False
    )


def test_demo_prints_100_decreasing_losses():
    proc = _run(["-m", "fastlin", "demo"])
    assert proc.returncode == 0, proc.stderr
    losses = [float(m.group(1)) for m in re.finditer(r"^\[ Info: step \d+/100: loss (\S+)$", proc.stdout, re.M)]
    assert len(losses) == 100
    assert all(b < a for a, b in zip(losses, losses[1:]))
    final = float(re.search(r"final loss: (\S+)", proc.stdout).group(1))
    assert final < losses[-1] < 1e-3 * losses[0]


def test_demo_reports_bad_arguments_clearly():
    proc = _run(["-m", "fastlin", "demo", "--lr", "-1"])
    assert proc.returncode == 2 and "lr must be > 0" in proc.stderr


def test_import_needs_no_cuda():
    # numba.cuda made unimportable: fastlin still imports and says CUDA is unavailable.
    code = (
        "import sys; sys.modules['numba.cuda'] = None\n"
        "import fastlin\n"
        "assert not fastlin.cuda_available()\n"
        "try:\n"
        "    fastlin.Linear(2, 2, device='cuda')\n"
        "except fastlin.DeviceError as e:\n"
        "    print('DeviceError:', e)\n"
        "print(fastlin.Linear(2, 2).device)\n"
    )
    proc = _run(["-c", code], NUMBA_ENABLE_CUDASIM="0")
    assert proc.returncode == 0, proc.stderr
    assert "numba-cuda is not importable" in proc.stdout and proc.stdout.strip().endswith("cpu")


def test_import_is_light():
    proc = _run(
        [
            "-c",
            "import sys, fastlin; print(sorted(m for m in ('numba.cuda', 'sklearn', 'dask', 'matplotlib', 'tqdm', 'torch') if m in sys.modules))",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
