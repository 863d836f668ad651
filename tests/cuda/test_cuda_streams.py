"""Streams and imports at the edge of the CUDA backend: torch's side streams,
the DLPack handshake and its errors, and the caps on the block settings.

The real interop (a torch tensor written on a side stream, a JAX array) needs
a GPU (tests/cuda/test_cuda_inputs.py); here the producers are stand-ins that
record what fastlin asks of them, so the simulator checks the protocol.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

import fastlin


# --------------------------------------------------------------------------
# torch: __cuda_array_interface__ v2 carries no stream
# --------------------------------------------------------------------------
class _FakeStream:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def __eq__(self, other):
        return self.name == other.name

    def __hash__(self):
        return hash(self.name)

    def wait_stream(self, other):
        self.log.append(("wait", self.name, other.name))

    def synchronize(self):
        self.log.append(("synchronize", self.name))


def _fake_torch(current_name):
    log = []

    class Tensor:
        is_cuda = True
        device = "cuda:0"

    cuda = types.SimpleNamespace(
        current_stream=lambda device: _FakeStream(current_name, log),
        default_stream=lambda device: _FakeStream("default", log),
    )
    return types.SimpleNamespace(Tensor=Tensor, cuda=cuda), log


@pytest.mark.parametrize("current", ["side", "default"])
def test_a_torch_tensor_from_a_side_stream_is_waited_for_on_the_device(cops, monkeypatch, current):
    torch, log = _fake_torch(current)
    monkeypatch.setitem(sys.modules, "torch", torch)
    cops._wait_for_torch_stream(torch.Tensor())
    # A side stream: the default stream (fastlin's) waits for it on the
    # device; never a host synchronisation.  The default stream: nothing.
    assert log == ([("wait", "default", "side")] if current == "side" else [])


def test_other_arrays_never_touch_torch(cops, monkeypatch):
    torch, log = _fake_torch("side")
    monkeypatch.setitem(sys.modules, "torch", torch)
    cops._wait_for_torch_stream(cops.from_host(__import__("numpy").ones(3)))
    assert log == []
    monkeypatch.delitem(sys.modules, "torch")
    cops._wait_for_torch_stream(object())  # torch not loaded: nothing to do, no import
    assert "torch" not in sys.modules


# --------------------------------------------------------------------------
# DLPack: tell the producer our stream; errors are TypeError / DeviceError
# --------------------------------------------------------------------------
class _RecordingDLPack:
    """A DLPack producer on a CUDA device that records the stream it is
    given and then refuses (there is no GPU memory to hand out here)."""

    def __init__(self):
        self.streams = []

    def __dlpack_device__(self):
        return (2, 0)  # kDLCUDA, device 0

    def __dlpack__(self, stream=None, **kwargs):
        self.streams.append(stream)
        raise BufferError("no GPU memory here")


def test_dlpack_producer_gets_the_default_stream_and_a_failure_is_a_type_error(cops):
    producer = _RecordingDLPack()
    with pytest.raises(TypeError, match="X: cannot view this DLPack array"):
        cops._from_dlpack(producer, "X")
    # 1 is DLPack's legacy default stream (2: per-thread): a handshake on the
    # stream fastlin launches on, never -1 (no ordering) plus a device sync.
    assert producer.streams and set(producer.streams) <= {1, 2}, producer.streams


def test_dlpack_without_cuda_core_is_a_device_error(cops, monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.core.utils", None)  # import raises ImportError
    with pytest.raises(fastlin.DeviceError, match="X: DLPack GPU arrays need cuda.core"):
        cops._from_dlpack(_RecordingDLPack(), "X")


def test_dlpack_path_never_synchronises_the_device(cops, monkeypatch):
    calls = []
    monkeypatch.setattr(cops._cuda, "synchronize", lambda: calls.append(1))
    with pytest.raises(TypeError):
        cops._from_dlpack(_RecordingDLPack(), "X")
    assert calls == []


# --------------------------------------------------------------------------
# block settings: capped to what compiles
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FASTLIN_CUDA_TPB", "512"),
        ("FASTLIN_CUDA_TPB", "1024"),
        ("FASTLIN_CUDA_TILE", "32"),
        ("FASTLIN_CUDA_TPB", "24"),
    ],
)
def test_block_settings_beyond_what_compiles_are_refused_at_import(name, value):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", **{name: value})
    code = "import fastlin.backends.cuda_config"
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError:") and name in last and "48 KB" in last, last
