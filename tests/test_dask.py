"""fastlin.dask: training and prediction on dask arrays.

References first: a naive float64 numpy fit, and ``Linear.fit`` itself (the
guarantee is "the same answer as the single machine").  Distributed tests run
on a 2-process LocalCluster on 127.0.0.1 that this module starts and stops.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("dask.array", reason="fastlin.dask needs dask: pip install 'fastlin[dask]'")
pytest.importorskip("distributed", reason="the cluster tests need distributed: pip install 'fastlin[dask]'")

import dask  # noqa: E402
import dask.array as da  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

import fastlin  # noqa: E402
import fastlin.dask as fd  # noqa: E402

RTOL = 1e-10


# --------------------------------------------------------------------------
# references and helpers
# --------------------------------------------------------------------------
def naive_fit(W, b, X, T, steps, lr, momentum):
    """Full-batch SGD with torch's momentum on the mean squared error, float64 numpy."""
    W, b = W.astype(np.float64).copy(), b.astype(np.float64).copy()
    bufW = bufb = None
    losses = []
    n, o = T.shape
    for _ in range(steps):
        R = X @ W.T + b - T
        losses.append(float((R * R).sum() / (n * o)))
        gW, gb = 2.0 / (n * o) * R.T @ X, 2.0 / (n * o) * R.sum(axis=0)
        bufW, bufb = (gW, gb) if bufW is None else (momentum * bufW + gW, momentum * bufb + gb)
        W, b = W - lr * bufW, b - lr * bufb
    return np.array(losses), W, b


def data(n=3001, d=7, o=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    W = rng.standard_normal((o, d))
    T = X @ W.T + 0.1 * rng.standard_normal((n, o))
    return X, T


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def assert_same_fit(model_a, hist_a, model_b, hist_b, rtol=RTOL):
    assert len(hist_a.loss) == len(hist_b.loss)
    assert rel(hist_a.loss, hist_b.loss) < rtol
    assert rel(model_a.weight, model_b.weight) < rtol
    if model_b.bias is not None:
        assert rel(model_a.bias, model_b.bias) < rtol


def recording(callback=None):
    """A fit callback that keeps a copy of the weights after every step."""
    seen = []

    def cb(step, loss):
        seen.append((step, loss))
        return callback(step, loss) if callback else None

    return seen, cb


@pytest.fixture(scope="module")
def cluster():
    # One thread per worker: 2 workers use this machine's 2 cores.  The
    # scheduler's HTTP server gets a free port: the default 8787 may be taken
    # by another cluster, and distributed's warning about that would be an
    # error here (filterwarnings = error).
    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    ) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    # Not the global default: tests without this fixture run on dask's local
    # scheduler even while the cluster is up.
    with Client(cluster, set_as_default=False) as c:
        yield c


@pytest.fixture
def on_cluster(client):
    with client.as_current():
        yield client


# --------------------------------------------------------------------------
# import behaviour
# --------------------------------------------------------------------------
def test_import_fastlin_does_not_import_dask():
    code = "import sys, fastlin, numpy as np; fastlin.Linear(2, 1).fit(np.ones((3, 2)), np.ones(3), steps=1); print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_dask_gives_install_hint():
    # sys.modules[name] = None makes "import name" raise ImportError.
    code = (
        "import sys; sys.modules['dask'] = None; sys.modules['dask.array'] = None\n"
        "try:\n    import fastlin.dask\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'fastlin[dask]'" in out.stdout


# --------------------------------------------------------------------------
# the same answer as the single machine
# --------------------------------------------------------------------------
def test_full_batch_matches_naive_reference_local_scheduler():
    X, T = data()
    model = fastlin.Linear(7, 3, dtype=np.float64, seed=1)
    W0, b0 = model.numpy()
    hist = fd.fit(
        model,
        da.from_array(X, chunks=(400, 7)),
        da.from_array(T, chunks=(400, 3)),
        steps=20,
        opt=fastlin.SGD(0.05, momentum=0.9),
    )
    loss, W, b = naive_fit(W0, b0, X, T, 20, 0.05, 0.9)
    assert rel(hist.loss, loss) < 1e-12
    assert rel(model.weight, W) < 1e-12 and rel(model.bias, b) < 1e-12


@pytest.mark.parametrize("scheduler", ["sync", "threads", "default"])
@pytest.mark.parametrize("bias, reduction", [(True, "mean"), (False, "sum")])
def test_full_batch_matches_model_fit_local(scheduler, bias, reduction):
    X, T = data(n=2999)
    ref = fastlin.Linear(7, 3, bias=bias, dtype=np.float64, seed=2)
    model = ref.copy()
    opt_kw = dict(lr=0.05 if reduction == "mean" else 2e-5, momentum=0.9, nesterov=True, weight_decay=1e-3)
    h_ref = ref.fit(X, T, steps=20, opt=fastlin.SGD(**opt_kw), reduction=reduction)
    # 20 chunks (the last one short) make a 3-level reduction tree (20 -> 3 -> 1).
    Xd, Td = da.from_array(X, chunks=(150, 7)), da.from_array(T, chunks=(150, 3))
    with dask.config.set(scheduler=None if scheduler == "default" else scheduler):
        hist = fd.fit(model, Xd, Td, steps=20, opt=fastlin.SGD(**opt_kw), reduction=reduction)
    assert_same_fit(model, hist, ref, h_ref)
    assert hist.loss[-1] < hist.loss[0]


# (12, 10): enough outputs for the CPU backend's GEMM path, as well as its
# streaming one.  embed=False sends the parameters as one shared task, the
# path layers too large to ride inside every chunk task take.
@pytest.mark.parametrize("embed", [True, False])
@pytest.mark.parametrize("d, o", [(7, 3), (12, 10)])
def test_full_batch_matches_model_fit_on_cluster(on_cluster, monkeypatch, d, o, embed):
    if not embed:
        monkeypatch.setattr(fd, "EMBED_PARAM_BYTES", 0)
    X, T = data(n=3001, d=d, o=o)
    ref = fastlin.Linear(d, o, dtype=np.float64, seed=3)
    model = ref.copy()
    h_ref = ref.fit(X, T, steps=20, opt=fastlin.SGD(0.05, momentum=0.9))
    hist = fd.fit(
        model,
        da.from_array(X, chunks=(300, d)),
        da.from_array(T, chunks=(300, o)),
        steps=20,
        opt=fastlin.SGD(0.05, momentum=0.9),
    )
    assert_same_fit(model, hist, ref, h_ref)


def test_empty_chunks_are_fine():
    X, T = data(n=300)
    chunks = (100, 0, 150, 0, 50)
    ref = fastlin.Linear(7, 3, dtype=np.float64, seed=3)
    model, mini = ref.copy(), ref.copy()
    h_ref = ref.fit(X, T, steps=5, opt=fastlin.SGD(0.05, momentum=0.9))
    Xd, Td = da.from_array(X, chunks=(chunks, 7)), da.from_array(T, chunks=(chunks, 3))
    hist = fd.fit(model, Xd, Td, steps=5, opt=fastlin.SGD(0.05, momentum=0.9))
    assert_same_fit(model, hist, ref, h_ref)
    # Mini-batches skip the empty chunks: 3 batches an epoch.
    assert len(fd.fit(mini, Xd, Td, epochs=2, batch_size="chunk", opt=fastlin.SGD(0.01))) == 6


def test_one_output_with_1d_targets_and_float32(on_cluster):
    X, T = data(n=1000, d=5, o=1)
    X32, t32 = X.astype(np.float32), T[:, 0].astype(np.float32)
    ref = fastlin.Linear(5, 1, seed=4)  # float32
    model = ref.copy()
    h_ref = ref.fit(X32, t32, steps=20, opt=fastlin.SGD(0.1, momentum=0.5))
    # float64 chunks are cast to the model's float32 on the workers.
    hist = fd.fit(
        model,
        da.from_array(X, chunks=(128, 5)),
        da.from_array(t32, chunks=128),
        steps=20,
        opt=fastlin.SGD(0.1, momentum=0.5),
    )
    assert model.weight.dtype == np.float32
    # Float64 sums in another order may round one float32 weight differently.
    assert_same_fit(model, hist, ref, h_ref, rtol=1e-5)


def test_momentum_carries_over_between_calls(on_cluster):
    """Two fits of 10 steps with one optimiser equal one fit of 20 (as with Linear.fit)."""
    X, T = data(n=800)
    ref = fastlin.Linear(7, 3, dtype=np.float64, seed=5)
    model = ref.copy()
    h_ref = ref.fit(X, T, steps=20, opt=fastlin.SGD(0.05, momentum=0.9))
    opt = fastlin.SGD(0.05, momentum=0.9)
    Xd, Td = da.from_array(X, chunks=(200, 7)), da.from_array(T, chunks=(200, 3))
    h1 = fd.fit(model, Xd, Td, steps=10, opt=opt)
    h2 = fd.fit(model, Xd, Td, steps=10, opt=opt)
    assert rel(np.concatenate([h1.loss, h2.loss]), h_ref.loss) < RTOL
    assert rel(model.weight, ref.weight) < RTOL


def test_epochs_steps_default_and_callback_stop():
    X, T = data(n=300)
    Xd, Td = da.from_array(X, chunks=(100, 7)), da.from_array(T, chunks=(100, 3))
    model = fastlin.Linear(7, 3, dtype=np.float64, seed=6)
    assert len(fd.fit(model, Xd, Td, epochs=4, opt=fastlin.SGD(0.01))) == 4
    assert len(fd.fit(model, Xd, Td, epochs=2, batch_size=50, opt=fastlin.SGD(0.01))) == 12
    assert len(fd.fit(model, Xd, Td, opt=fastlin.SGD(0.01))) == 100
    seen, cb = recording(lambda step, loss: step == 3)
    hist = fd.fit(model, Xd, Td, steps=10, opt=fastlin.SGD(0.01), callback=cb)
    assert hist.stopped_early and len(hist) == 3
    assert [s for s, _ in seen] == [1, 2, 3] and [l for _, l in seen] == hist.loss.tolist()
    before = model.weight.copy()
    assert len(fd.fit(model, Xd, Td, steps=0, opt=fastlin.SGD(0.01))) == 0
    np.testing.assert_array_equal(model.weight, before)


# --------------------------------------------------------------------------
# mini-batch SGD over chunks
# --------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size, rows_per_batch", [("chunk", 100), (50, 50)])
def test_unshuffled_minibatch_matches_model_fit(on_cluster, batch_size, rows_per_batch):
    X, T = data(n=600)
    ref = fastlin.Linear(7, 3, dtype=np.float64, seed=7)
    model = ref.copy()
    h_ref = ref.fit(X, T, epochs=2, batch_size=rows_per_batch, shuffle=False, opt=fastlin.SGD(0.05, momentum=0.9))
    Xd, Td = da.from_array(X, chunks=(100, 7)), da.from_array(T, chunks=(100, 3))
    hist = fd.fit(model, Xd, Td, epochs=2, batch_size=batch_size, shuffle=False, opt=fastlin.SGD(0.05, momentum=0.9))
    assert_same_fit(model, hist, ref, h_ref)


def test_shuffled_minibatch_follows_the_documented_seeded_order():
    X, T = data(n=700)
    chunk = 100
    Xd, Td = da.from_array(X, chunks=(chunk, 7)), da.from_array(T, chunks=(chunk, 3))
    ref = fastlin.Linear(7, 3, dtype=np.float64, seed=8)
    model, again, other = ref.copy(), ref.copy(), ref.copy()
    opt = dict(lr=0.05, momentum=0.9)
    hist = fd.fit(model, Xd, Td, epochs=3, batch_size="chunk", seed=123, opt=fastlin.SGD(**opt))
    # The order fit documents: epoch e visits chunks default_rng((seed, e)).permutation(n).
    ref_opt, ref_loss = fastlin.SGD(**opt), []
    for epoch in range(3):
        for i in np.random.default_rng((123, epoch)).permutation(7):
            ref_loss.append(ref.step(X[i * chunk : (i + 1) * chunk], T[i * chunk : (i + 1) * chunk], ref_opt))
    assert hist.seed == 123
    assert rel(hist.loss, ref_loss) < RTOL and rel(model.weight, ref.weight) < RTOL
    # Same seed, same result; another seed, another order.
    h_again = fd.fit(again, Xd, Td, epochs=3, batch_size="chunk", seed=123, opt=fastlin.SGD(**opt))
    np.testing.assert_array_equal(h_again.loss, hist.loss)
    h_other = fd.fit(other, Xd, Td, epochs=3, batch_size="chunk", seed=124, opt=fastlin.SGD(**opt))
    assert not np.array_equal(h_other.loss, hist.loss)
    # Without a seed one is drawn and recorded, and it replays the run.
    replay_src, replay = ref.copy(), ref.copy()
    h_drawn = fd.fit(replay_src, Xd, Td, epochs=2, batch_size="chunk", opt=fastlin.SGD(**opt))
    h_replay = fd.fit(replay, Xd, Td, epochs=2, batch_size="chunk", seed=h_drawn.seed, opt=fastlin.SGD(**opt))
    np.testing.assert_array_equal(h_replay.loss, h_drawn.loss)
    # A full batch has no order, and draws no seed (as Linear.fit).
    assert fd.fit(ref.copy(), Xd, Td, steps=2, opt=fastlin.SGD(**opt)).seed is None


# --------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------
@pytest.mark.parametrize("use_cluster", [False, True])
def test_predict(request, use_cluster):
    X, _ = data(n=1001)
    model = fastlin.Linear(7, 3, dtype=np.float64, seed=9)
    Xd = da.from_array(X, chunks=(250, 7))
    Y = fd.predict(model, Xd)
    assert isinstance(Y, da.Array) and Y.shape == (1001, 3) and Y.dtype == np.float64
    assert Y.chunks == (Xd.chunks[0], (3,))
    W, b = model.numpy()
    model.weight = np.zeros_like(W)  # predict captured the weights it was called with
    if use_cluster:
        with request.getfixturevalue("client").as_current():
            got = Y.compute()
    else:
        got = Y.compute()
    assert rel(got, X @ W.T + b) < 1e-13


def test_predict_errors():
    model = fastlin.Linear(7, 3, seed=0)
    with pytest.raises(ValueError, match="chunked along its columns"):
        fd.predict(model, da.ones((10, 7), chunks=(5, 3)))
    with pytest.raises(ValueError, match="in_features=7"):
        fd.predict(model, da.ones((10, 6), chunks=(5, 6)))
    with pytest.raises(TypeError, match="dask array"):
        fd.predict(model, np.ones((10, 7)))
    bad = da.from_array(np.where(np.arange(70).reshape(10, 7) == 12, np.nan, 1.0), chunks=(5, 7))
    with pytest.raises(ValueError, match="X contains NaN"):
        fd.predict(model, bad).compute(scheduler="sync")


# --------------------------------------------------------------------------
# errors before any work
# --------------------------------------------------------------------------
def counting_array(X, chunks, calls):
    """A dask array whose chunks count how often they are computed."""

    def load(block, block_info=None):
        calls.append(block_info[0]["chunk-location"])
        return block

    return da.from_array(X, chunks=chunks).map_blocks(load, dtype=X.dtype)


@pytest.mark.parametrize(
    "make_X, make_T, error, match",
    [
        (
            lambda X, c: counting_array(X, (100, 4), c),
            lambda T, c: da.from_array(T, chunks=(100, 3)),
            ValueError,
            "chunked along its columns",
        ),
        (
            lambda X, c: counting_array(X, (100, 7), c),
            lambda T, c: da.from_array(T, chunks=(100, 1)),
            ValueError,
            "T is chunked along its columns",
        ),
        (
            lambda X, c: counting_array(X, (100, 7), c),
            lambda T, c: da.from_array(T, chunks=(150, 3)),
            ValueError,
            "same row chunks",
        ),
        (
            lambda X, c: counting_array(X, (100, 7), c)[da.ones(300, chunks=100) > 0],
            lambda T, c: da.from_array(T, chunks=(100, 3)),
            ValueError,
            "unknown chunk sizes",
        ),
        (
            lambda X, c: counting_array(X, (100, 7), c)[:, :6],
            lambda T, c: da.from_array(T, chunks=(100, 3)),
            ValueError,
            "in_features=7",
        ),
        (
            lambda X, c: counting_array(X, (100, 7), c),
            lambda T, c: da.from_array(T[:200], chunks=(100, 3)),
            ValueError,
            "300 rows but T has 200",
        ),
        (lambda X, c: counting_array(X, (100, 7), c), lambda T, c: T, TypeError, "T must be a dask array"),
        (
            lambda X, c: counting_array(X, (100, 7), c).astype(complex),
            lambda T, c: da.from_array(T, chunks=(100, 3)),
            TypeError,
            "real numbers",
        ),
    ],
)
def test_bad_arrays_fail_before_any_work(make_X, make_T, error, match):
    X, T = data(n=300)
    calls = []
    model = fastlin.Linear(7, 3, dtype=np.float64, seed=10)
    opt = fastlin.SGD(0.1, momentum=0.9)
    before = model.weight.copy()
    with dask.config.set(scheduler="sync"), pytest.raises(error, match=match):
        fd.fit(model, make_X(X, calls), make_T(T, calls), steps=3, opt=opt)
    assert calls == []  # no chunk was computed
    np.testing.assert_array_equal(model.weight, before)


def test_bad_arguments():
    X, T = data(n=300)
    Xd, Td = da.from_array(X, chunks=(100, 7)), da.from_array(T, chunks=(100, 3))
    model = fastlin.Linear(7, 3, seed=0)
    cases = [
        (dict(opt=0.1), TypeError, "fastlin.SGD"),
        (dict(steps=3, epochs=1), ValueError, "not both"),
        (dict(batch_size="rows"), ValueError, "batch_size"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(reduction="max"), ValueError, "reduction"),
        (dict(callback=5), TypeError, "callable"),
        (dict(persist="yes"), TypeError, "persist"),
    ]
    for kwargs, error, match in cases:
        kwargs = {"opt": fastlin.SGD(0.1), **kwargs}
        with pytest.raises(error, match=match):
            fd.fit(model, Xd, Td, steps=kwargs.pop("steps", 3), **kwargs)
    with pytest.raises(TypeError, match="fastlin.Linear"):
        fd.fit("model", Xd, Td, steps=1, opt=fastlin.SGD(0.1))


# --------------------------------------------------------------------------
# non-finite data and divergence, as in the core API
# --------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [None, "chunk"])
def test_nonfinite_data_raises_and_restores_weights(on_cluster, batch_size):
    X, T = data(n=400)
    T[350, 1] = np.inf  # in the last chunk: an unshuffled mini-batch fit applies 3 steps first
    Xd, Td = da.from_array(X, chunks=(100, 7)), da.from_array(T, chunks=(100, 3))
    model = fastlin.Linear(7, 3, dtype=np.float64, seed=11)
    opt = fastlin.SGD(0.05, momentum=0.9)
    before = model.weight.copy(), model.bias.copy()
    seen, cb = recording()
    with pytest.raises(ValueError, match="T contains NaN or Inf"):
        fd.fit(model, Xd, Td, steps=8, batch_size=batch_size, shuffle=False, opt=opt, callback=cb)
    assert len(seen) == (0 if batch_size is None else 3)
    np.testing.assert_array_equal(model.weight, before[0])
    np.testing.assert_array_equal(model.bias, before[1])
    # The momentum buffers were rolled back too: the next fit on clean data
    # matches a fresh model.fit with a fresh optimiser.
    T[350, 1] = 0.0
    ref = model.copy()
    h_ref = ref.fit(X, T, steps=5, opt=fastlin.SGD(0.05, momentum=0.9))
    hist = fd.fit(model, Xd, da.from_array(T, chunks=(100, 3)), steps=5, opt=opt)
    assert_same_fit(model, hist, ref, h_ref)


def test_nan_in_X_is_reported_as_X():
    X, T = data(n=200)
    X[5, 2] = np.nan
    model = fastlin.Linear(7, 3, dtype=np.float64, seed=12)
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        fd.fit(
            model, da.from_array(X, chunks=(100, 7)), da.from_array(T, chunks=(100, 3)), steps=2, opt=fastlin.SGD(0.1)
        )


def test_divergence_keeps_last_finite_step(on_cluster):
    X, T = data(n=400)
    X *= 1e3
    model = fastlin.Linear(7, 3, dtype=np.float64, seed=13)
    ref = model.copy()
    seen, cb = recording()
    weights = []
    with pytest.raises(fastlin.DivergenceError) as err:
        fd.fit(
            model,
            da.from_array(X, chunks=(100, 7)),
            da.from_array(T, chunks=(100, 3)),
            steps=500,
            opt=fastlin.SGD(1.0),
            callback=lambda s, l: weights.append(model.weight.copy()) or cb(s, l),
        )
    with pytest.raises(fastlin.DivergenceError) as ref_err:
        ref.fit(X, T, steps=500, opt=fastlin.SGD(1.0))
    assert err.value.step == ref_err.value.step == len(seen) + 1
    assert len(err.value.history) == len(seen)
    assert np.isfinite(model.weight).all()
    np.testing.assert_array_equal(model.weight, weights[-1])


# --------------------------------------------------------------------------
# data stays on the workers
# --------------------------------------------------------------------------
def _traffic(client, cluster):
    """Bytes sent so far: client -> scheduler, scheduler -> workers, worker -> worker."""
    to_workers = sum(comm.byte_count for comm in cluster.scheduler.stream_comms.values())
    between = sum(client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values())
    return np.array([client.scheduler_comm.byte_count, to_workers, between])


# The data start as numpy arrays in the client's graph, so the first send
# (and, in the control, every step's) is a graph of ~11 MB: distributed warns.
@pytest.mark.filterwarnings("ignore:Sending large graph:UserWarning")
@pytest.mark.parametrize("persist", [True, False])
def test_only_parameters_travel_per_step(on_cluster, cluster, persist):
    X, T = data(n=40_000, d=32, o=2)
    data_bytes = X.nbytes + T.nbytes  # 10.9 MB
    Xd, Td = da.from_array(X, chunks=(5000, 32)), da.from_array(T, chunks=(5000, 2))
    model = fastlin.Linear(32, 2, dtype=np.float64, seed=14)
    marks = {}
    steps = 11 if persist else 3  # the control ships 11 MB a step: 2 are plenty

    def cb(step, loss):
        if step in (1, steps):
            marks[step] = _traffic(on_cluster, cluster)

    fd.fit(model, Xd, Td, steps=steps, opt=fastlin.SGD(0.01), callback=cb, persist=persist)
    per_step = (marks[steps] - marks[1]) / (steps - 1)
    if persist:
        # Parameters are 66 numbers; what moves per step is graph and task
        # overhead, far below one copy of the data.
        assert per_step[0] < data_bytes / 100, per_step
        assert per_step[1] < data_bytes / 100, per_step
        assert per_step[2] < data_bytes / 100, per_step
    else:
        # The control: da.from_array keeps the numpy array in the graph, so
        # without persisting, every step ships it again -- and the probe sees it.
        assert per_step[0] > data_bytes, per_step


# --------------------------------------------------------------------------
# a worker dies mid-fit
# --------------------------------------------------------------------------
def _kill_worker_holding_data(client, tag="fastlin-data"):
    holders = {addr: sum(tag in str(k) for k in keys) for addr, keys in client.has_what().items()}
    victim = max(holders, key=holders.get)
    assert holders[victim] > 0, holders  # otherwise the kill would test nothing
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)


def _reference_weights(model, X, T, steps, opt_kw):
    """Weights of model.fit after each step (index 0: before the fit)."""
    ref, out = model.copy(), [model.weight.copy()]
    ref.fit(X, T, steps=steps, opt=fastlin.SGD(**opt_kw), callback=lambda s, l: out.append(ref.weight.copy()))
    return out


def test_worker_death_is_retried_and_result_unchanged(on_cluster):
    X, T = data(n=2000)
    opt_kw = dict(lr=0.05, momentum=0.9)
    model = fastlin.Linear(7, 3, dtype=np.float64, seed=15)
    ref_weights = _reference_weights(model, X, T, 20, opt_kw)
    h_ref = model.copy().fit(X, T, steps=20, opt=fastlin.SGD(**opt_kw))

    def cb(step, loss):
        if step == 5:
            _kill_worker_holding_data(on_cluster)

    try:
        hist = fd.fit(
            model,
            da.from_array(X, chunks=(250, 7)),
            da.from_array(T, chunks=(250, 3)),
            steps=20,
            opt=fastlin.SGD(**opt_kw),
            callback=cb,
        )
    finally:
        on_cluster.wait_for_workers(2, timeout=60)
    # The lost chunks were recomputed from their source; the answer is the same.
    assert rel(hist.loss, h_ref.loss) < RTOL
    assert rel(model.weight, ref_weights[20]) < RTOL


def test_failed_step_after_worker_death_keeps_last_completed_step(on_cluster, tmp_path):
    X, T = data(n=2000)
    opt_kw = dict(lr=0.05, momentum=0.9)
    model = fastlin.Linear(7, 3, dtype=np.float64, seed=16)
    ref_weights = _reference_weights(model, X, T, 20, opt_kw)
    flags = str(tmp_path)

    # A source that can be read once: when the killed worker's chunks must be
    # recomputed, reading them fails, so the step after the kill cannot finish.
    def read_once(i, block):
        flag = os.path.join(flags, f"chunk-{i}")
        if os.path.exists(flag):
            raise OSError(f"chunk {i} is gone")
        open(flag, "w").close()
        return block

    Xd = da.concatenate(
        [
            da.from_delayed(dask.delayed(read_once)(i, X[i * 250 : (i + 1) * 250]), shape=(250, 7), dtype=X.dtype)
            for i in range(8)
        ]
    )
    done = []

    def cb(step, loss):
        done.append(model.weight.copy())
        if step == 5:
            _kill_worker_holding_data(on_cluster)

    try:
        with pytest.raises(OSError, match="is gone"):
            fd.fit(model, Xd, da.from_array(T, chunks=(250, 3)), steps=20, opt=fastlin.SGD(**opt_kw), callback=cb)
    finally:
        on_cluster.wait_for_workers(2, timeout=60)
    assert len(done) == 5
    # Exactly the weights after step 5: nothing of step 6 was applied.
    np.testing.assert_array_equal(model.weight, done[-1])
    assert rel(model.weight, ref_weights[5]) < RTOL


# --------------------------------------------------------------------------
# out of core: data on disk
# --------------------------------------------------------------------------
def test_from_npy_reads_row_chunks(tmp_path):
    a = np.arange(37 * 5, dtype=np.float32).reshape(37, 5)
    v = np.arange(37, dtype=np.int16)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "v.npy", v)
    A = fd.from_npy(tmp_path / "a.npy", chunk_rows=10)
    V = fd.from_npy(tmp_path / "v.npy", chunk_rows=10)
    assert A.chunks == ((10, 10, 10, 7), (5,)) and A.dtype == np.float32
    np.testing.assert_array_equal(A.compute(scheduler="sync"), a)
    np.testing.assert_array_equal(V.compute(scheduler="sync"), v)
    np.testing.assert_array_equal(A[13:29, 1:4].compute(scheduler="sync"), a[13:29, 1:4])
    # The graph names the file; it does not carry it (da.from_array of a
    # memmap would pickle all 8 MB).
    np.save(tmp_path / "big.npy", np.ones((100_000, 10)))
    big = fd.from_npy(tmp_path / "big.npy", chunk_rows=10_000)
    assert len(pickle.dumps(dict(big.__dask_graph__()))) < 20_000
    assert (
        len(pickle.dumps(dict(da.from_array(np.load(tmp_path / "big.npy", mmap_mode="r")).__dask_graph__())))
        > 8_000_000
    )
    np.save(tmp_path / "f.npy", np.asfortranarray(a))
    with pytest.raises(ValueError, match="Fortran order"):
        fd.from_npy(tmp_path / "f.npy", chunk_rows=10)


def test_fit_on_disk_data_matches_model_fit(on_cluster, tmp_path):
    X, T = data(n=5003, d=9, o=2)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "T.npy", T)
    Xd = fd.from_npy(tmp_path / "X.npy", chunk_rows=1000)
    Td = fd.from_npy(tmp_path / "T.npy", chunk_rows=1000)
    ref = fastlin.Linear(9, 2, dtype=np.float64, seed=17)
    model = ref.copy()
    h_ref = ref.fit(X, T, steps=20, opt=fastlin.SGD(0.05, momentum=0.9))
    # persist=False: every step reads the chunks from disk again, on the workers.
    hist = fd.fit(model, Xd, Td, steps=20, opt=fastlin.SGD(0.05, momentum=0.9), persist=False)
    assert_same_fit(model, hist, ref, h_ref)


def test_hyper_parameters_set_by_a_callback_take_effect_at_the_next_step():
    X, T = data(n=600)
    ref = fastlin.Linear(7, 3, dtype=np.float64, seed=4)
    model, fixed = ref.copy(), ref.copy()

    def schedule(opt):
        def callback(step, loss):
            if step == 3:
                opt.lr = opt.lr / 4
            if step == 5:
                opt.momentum = 0.5

        return callback

    opt_ref, opt = fastlin.SGD(0.05, momentum=0.9), fastlin.SGD(0.05, momentum=0.9)
    h_ref = ref.fit(X, T, steps=8, opt=opt_ref, callback=schedule(opt_ref))
    Xd, Td = da.from_array(X, chunks=(200, 7)), da.from_array(T, chunks=(200, 3))
    with dask.config.set(scheduler="sync"):
        hist = fd.fit(model, Xd, Td, steps=8, opt=opt, callback=schedule(opt))
        fd.fit(fixed, Xd, Td, steps=8, opt=fastlin.SGD(0.05, momentum=0.9))
    assert_same_fit(model, hist, ref, h_ref)
    assert rel(fixed.weight, model.weight) > 1e-6  # the schedule changed the trajectory


# --------------------------------------------------------------------------
# optimisers and schedules (issue #13): the same update rules as Linear.fit
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make_opt",
    [
        lambda: fastlin.Adam(0.02, amsgrad=True, schedule=fastlin.schedules.cosine(T_max=15, eta_min=1e-3)),
        lambda: fastlin.AdamW(0.02, weight_decay=0.05, schedule=fastlin.schedules.step(step_size=4, gamma=0.5)),
        lambda: fastlin.SGD(0.05, momentum=0.9, schedule=fastlin.schedules.exponential(0.9)),
    ],
    ids=["adam-amsgrad-cosine", "adamw-step", "sgd-exponential"],
)
@pytest.mark.parametrize("batch_size", [None, 50])
def test_every_optimizer_and_schedule_matches_model_fit(make_opt, batch_size):
    X, T = data(n=600)
    ref = fastlin.Linear(7, 3, dtype=np.float64, seed=11)
    model = ref.copy()
    h_ref = ref.fit(X, T, steps=20, batch_size=batch_size, shuffle=False, opt=make_opt())
    Xd, Td = da.from_array(X, chunks=(100, 7)), da.from_array(T, chunks=(100, 3))
    with dask.config.set(scheduler="sync"):
        opt = make_opt()
        hist = fd.fit(model, Xd, Td, steps=12, batch_size=batch_size, shuffle=False, opt=opt)
        more = fd.fit(model, Xd, Td, steps=8, batch_size=batch_size, shuffle=False, opt=opt)  # the schedule goes on
    assert rel(np.concatenate([hist.loss, more.loss]), h_ref.loss) < RTOL
    np.testing.assert_allclose(np.concatenate([hist.lr, more.lr]), h_ref.lr, rtol=1e-15)
    assert rel(model.weight, ref.weight) < RTOL and rel(model.bias, ref.bias) < RTOL
