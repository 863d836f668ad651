"""Many Python threads on one model: read-only calls stay exact, training is serialised.

The kernels release the GIL (``nogil=True``) and numpy's matmul does too, so
these threads really do run the kernels at the same time.  Each thread calls
with its own data, so a thread that read another's scratch buffers would
return a wrong value; every result is compared bit for bit with the same call
made alone, before the threads start.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastlin
from fastlin.backends import cpu_ops
from tests.support.helpers import make_data

N_THREADS = 8
CALLS = 40


def _run_threads(target, n=N_THREADS):
    """Run ``target(i)`` in ``n`` threads started together; re-raise the first error."""
    barrier = threading.Barrier(n)
    errors = []

    def body(i):
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _calls(model, X, T):
    """Every read-only call, as host arrays (bytes compared later)."""
    g = model.gradients(X, T)
    dX, dW, db = model.backward(X, T)
    return [
        np.asarray(model.forward(X)),
        np.float64(model.loss(X, T)),
        np.float64(g.loss),
        np.asarray(g.weight),
        np.asarray(g.bias),
        np.asarray(dX),
        np.asarray(dW),
        np.asarray(db),
    ]


# (rows, in, out): streaming serial, streaming parallel (many chunks), GEMM in several row blocks
PATHS = {
    "streaming": ((40, 7, 3), {}),
    "streaming-parallel": ((300, 9, 2), {"MIN_CHUNK_WORK": 1, "PARALLEL_FORWARD_WORK": 0}),
    "gemm": ((150, 17, 33), {"GEMM_BLOCK_ROWS": 16}),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_read_only_calls_from_many_threads_are_exact(path, dtype, monkeypatch):
    (n, d, o), knobs = PATHS[path]
    for name, value in knobs.items():
        monkeypatch.setattr(cpu_ops, name, value)
    _, _, W, b = make_data(n, d, o, dtype, seed=1)
    model = fastlin.Linear.from_weights(W, b)
    # Each thread its own data, with its own row count (so its own scratch shape too).
    data = [make_data(n + 3 * (i % 3), d, o, dtype, seed=100 + i)[:2] for i in range(N_THREADS)]
    expected = [_calls(model, X, T) for X, T in data]
    bad = []

    def work(i):
        X, T = data[i]
        for k in range(CALLS):
            got = _calls(model, X, T)
            for j, (g, e) in enumerate(zip(got, expected[i])):
                if g.tobytes() != e.tobytes():
                    bad.append((i, k, j))

    _run_threads(work)
    assert not bad, (
        f"{len(bad)} of {N_THREADS * CALLS * 8} results differ from the same call made alone, e.g. {bad[:5]}"
    )


def _train_alone(W, b, X, T, hyper, steps):
    model = fastlin.Linear.from_weights(W, b)
    opt = fastlin.SGD(**hyper)
    for _ in range(steps):
        model.step(X, T, opt)
    return model


@pytest.mark.parametrize("shape", [(64, 6, 2), (150, 17, 33)], ids=["streaming", "gemm"])
def test_concurrent_steps_on_one_model_are_serialised(shape):
    # Every step is the same map W -> W - lr·g(W) (full batch, fixed data), so
    # steps that run one at a time give the bits of a plain loop whatever
    # their order; steps that interleaved would not.
    X, T, W, b = make_data(*shape, np.float32, seed=3)
    hyper = dict(lr=0.05, momentum=0.9)
    steps = 15
    reference = _train_alone(W, b, X, T, hyper, N_THREADS * steps)
    model = fastlin.Linear.from_weights(W, b)
    opt = fastlin.SGD(**hyper)
    _run_threads(lambda i: [model.step(X, T, opt) for _ in range(steps)])
    assert model.weight.tobytes() == reference.weight.tobytes()
    assert model.bias.tobytes() == reference.bias.tobytes()


@pytest.mark.parametrize("shape", [(64, 6, 2), (150, 17, 33)], ids=["streaming", "gemm"])
def test_concurrent_fits_on_one_model_run_one_after_another(shape):
    X, T, W, b = make_data(*shape, np.float64, seed=5)
    opt_ref = fastlin.SGD(0.05, momentum=0.9)
    reference = fastlin.Linear.from_weights(W, b)
    ref_losses = [reference.fit(X, T, steps=10, opt=opt_ref).loss for _ in range(N_THREADS)]
    model = fastlin.Linear.from_weights(W, b)
    opt = fastlin.SGD(0.05, momentum=0.9)
    losses = [None] * N_THREADS
    _run_threads(lambda i: losses.__setitem__(i, model.fit(X, T, steps=10, opt=opt).loss))
    assert model.weight.tobytes() == reference.weight.tobytes()
    # Each fit saw the model as some whole number of earlier fits left it.
    ref_first = sorted(float(h[0]) for h in ref_losses)
    assert sorted(float(h[0]) for h in losses) == ref_first


def test_one_optimiser_shared_by_models_on_many_threads():
    # Each thread trains its own model with the shared optimiser: the
    # per-model momentum state must stay separate and uncorrupted.
    hyper = dict(lr=0.03, momentum=0.9, nesterov=True)
    jobs = [make_data(50 + i, 5, 2 + i % 2, np.float32, seed=20 + i) for i in range(N_THREADS)]
    references = [_train_alone(W, b, X, T, hyper, 30) for X, T, W, b in jobs]
    models = [fastlin.Linear.from_weights(W, b) for _, _, W, b in jobs]
    opt = fastlin.SGD(**hyper)

    def work(i):
        X, T = jobs[i][:2]
        for k in range(30):
            if k % 10 == 5:  # mix fits in with the steps
                models[i].fit(X, T, steps=1, opt=opt)
            else:
                models[i].step(X, T, opt)

    _run_threads(work)
    for model, ref in zip(models, references):
        assert model.weight.tobytes() == ref.weight.tobytes()
        assert model.bias.tobytes() == ref.bias.tobytes()


def test_callback_may_step_its_own_model():
    # The training lock is reentrant: a fit's callback that steps (or fits)
    # the model it is training does not deadlock.
    X, T, W, b = make_data(20, 3, 1, np.float64, seed=8)
    model = fastlin.Linear.from_weights(W, b)
    opt = fastlin.SGD(0.01)
    seen = []
    model.fit(X, T, steps=3, opt=opt, callback=lambda step, loss: seen.append(model.step(X, T, opt)) and False)
    assert len(seen) == 3


def test_a_copy_taken_while_another_thread_fits_waits_for_the_fit():
    import pickle
    import time

    X, T, W, b = make_data(40, 5, 2, np.float64, seed=9)
    model = fastlin.Linear.from_weights(W, b)
    started = threading.Event()

    def callback(step, loss):
        if step == 2:
            started.set()
        time.sleep(0.005)  # keep the fit running while the other thread asks for a copy

    fitter = threading.Thread(target=lambda: model.fit(X, T, steps=20, lr=0.05, callback=callback))
    fitter.start()
    started.wait(30)
    copied = pickle.loads(pickle.dumps(model))  # blocks until the fit ends
    fitter.join()
    assert copied.weight.tobytes() == model.weight.tobytes()
    assert copied.bias.tobytes() == model.bias.tobytes()
