"""Adam, AdamW and the learning-rate schedules inside fastlin's compiled loops.

The reference is torch (``torch.nn.Linear`` + ``mse_loss`` + ``torch.optim``
+ ``torch.optim.lr_scheduler``, ``scheduler.step()`` after every
``optimizer.step()``), in float64, to 1e-9 relative.  The tests that need
torch skip one by one without it; the rest (arguments, state, pickling,
divergence) run everywhere.
"""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest

import fastlin
from fastlin import schedules
from fastlin.backends import abi

N, D, O = 37, 6, 3
STEPS = 100


def _data(seed=0, n=N, d=D, o=O):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    T = X @ rng.normal(size=(d, o)) + 0.3 * rng.normal(size=(n, o)) + 0.5
    W = rng.normal(size=(o, d)) * 0.3
    b = rng.normal(size=o) * 0.3
    return X, T, W, b


def _torch_optimizer(torch, params, name, kw):
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return cls(params, **kw)


def _torch_scheduler(torch, opt, schedule):
    """torch's scheduler for a fastlin schedule (None: constant)."""
    if schedule is None:
        return None
    kind, args = schedule
    lr_sched = torch.optim.lr_scheduler
    if kind == "step":
        return lr_sched.StepLR(opt, **args)
    if kind == "exponential":
        return lr_sched.ExponentialLR(opt, **args)
    if kind == "cosine":
        return lr_sched.CosineAnnealingLR(opt, **args)
    if kind == "linear":
        return lr_sched.LinearLR(opt, **args)
    if kind == "inverse_scaling":
        power_t = args["power_t"]
        return lr_sched.LambdaLR(opt, lambda k: 1.0 / (k + 1) ** power_t)
    if kind == "warmup":
        steps, start = args["steps"], args["start_factor"]
        ramp = lr_sched.LinearLR(opt, start_factor=start, end_factor=1.0, total_iters=steps)
        return lr_sched.SequentialLR(opt, [ramp, _torch_scheduler(torch, opt, args["then"])], milestones=[steps])
    raise AssertionError(kind)


def _fastlin_schedule(schedule):
    if schedule is None:
        return None
    kind, args = schedule
    if kind == "warmup":
        return schedules.warmup(_fastlin_schedule(args["then"]), args["steps"], args["start_factor"])
    return getattr(schedules, kind)(**args)


def _torch_run(X, T, W, b, steps, name, kw, schedule=None, batch=None):
    """Losses, lrs and final (W, b) of torch training in float64, batches in row order."""
    torch = pytest.importorskip("torch")
    layer = torch.nn.Linear(W.shape[1], W.shape[0], bias=b is not None, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(W))
        if b is not None:
            layer.bias.copy_(torch.from_numpy(b))
    opt = _torch_optimizer(torch, layer.parameters(), name, kw)
    sched = _torch_scheduler(torch, opt, schedule)
    Xt, Tt = torch.from_numpy(X), torch.from_numpy(T)
    n = X.shape[0]
    batch = batch or n
    losses, lrs = [], []
    pos = 0
    for _ in range(steps):
        xb, tb = Xt[pos : pos + batch], Tt[pos : pos + batch]
        pos = 0 if pos + batch >= n else pos + batch
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(layer(xb), tb)
        loss.backward()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
    W_out = layer.weight.detach().numpy().copy()
    b_out = None if b is None else layer.bias.detach().numpy().copy()
    return np.array(losses), np.array(lrs), W_out, b_out


def _fastlin_opt(name, kw, schedule=None):
    kw = dict(kw)
    cls = {"sgd": fastlin.SGD, "adam": fastlin.Adam, "adamw": fastlin.AdamW}[name]
    return cls(**kw, schedule=_fastlin_schedule(schedule))


ADAMS = [
    ("adam", dict(lr=0.01)),
    ("adam", dict(lr=0.02, betas=(0.8, 0.99), weight_decay=0.05)),
    ("adam", dict(lr=0.01, amsgrad=True)),
    ("adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True, eps=1e-6)),
    ("adamw", dict(lr=0.01)),
    ("adamw", dict(lr=0.02, weight_decay=0.2, amsgrad=True)),
]


def _ids(case):
    name, kw = case
    return name + "-" + ",".join(f"{k}={v}" for k, v in kw.items())


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", ADAMS, ids=_ids)
@pytest.mark.parametrize("bias", [True, False])
def test_adam_step_loop_matches_torch(case, bias):
    name, kw = case
    X, T, W, b = _data(1)
    b = b if bias else None
    losses, _, W_ref, b_ref = _torch_run(X, T, W, b, STEPS, name, kw)
    model = fastlin.Linear.from_weights(W, b)
    opt = _fastlin_opt(name, kw)
    got = [model.step(X, T, opt) for _ in range(STEPS)]
    _close(got, losses)
    _close(model.weight, W_ref)
    if bias:
        _close(model.bias, b_ref)


@pytest.mark.parametrize("case", ADAMS, ids=_ids)
@pytest.mark.parametrize("batch", [None, 8])
def test_adam_fit_matches_torch(case, batch):
    name, kw = case
    X, T, W, b = _data(2)
    losses, lrs, W_ref, b_ref = _torch_run(X, T, W, b, STEPS, name, kw, batch=batch)
    model = fastlin.Linear.from_weights(W, b)
    history = model.fit(X, T, steps=STEPS, opt=_fastlin_opt(name, kw), batch_size=batch, shuffle=False)
    _close(history.loss, losses)
    _close(history.lr, lrs)
    _close(model.weight, W_ref)
    _close(model.bias, b_ref)


SCHEDULES = [
    ("step", dict(step_size=7, gamma=0.5)),
    ("exponential", dict(gamma=0.97)),
    ("cosine", dict(T_max=30, eta_min=0.001)),
    ("cosine", dict(T_max=100)),
    ("linear", dict(start_factor=0.25, end_factor=1.0, total_iters=20)),
    ("linear", dict(start_factor=1.0, end_factor=0.1, total_iters=60)),
    ("inverse_scaling", dict(power_t=0.5)),
    ("constant", dict()),
    ("warmup", dict(steps=10, start_factor=0.1, then=("cosine", dict(T_max=90)))),
]


@pytest.mark.parametrize(
    "schedule", SCHEDULES, ids=lambda s: s[0] + "-" + ",".join(f"{k}={v}" for k, v in s[1].items())
)
@pytest.mark.parametrize(
    "case", [("sgd", dict(lr=0.05, momentum=0.9)), ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True))] + ADAMS[:2]
)
@pytest.mark.parametrize("batch", [None, 10])
def test_schedules_inside_fit_match_torch(schedule, case, batch):
    name, kw = case
    X, T, W, b = _data(3)
    torch_schedule = None if schedule[0] == "constant" else schedule
    losses, lrs, W_ref, b_ref = _torch_run(X, T, W, b, STEPS, name, kw, torch_schedule, batch=batch)
    model = fastlin.Linear.from_weights(W, b)
    history = model.fit(X, T, steps=STEPS, opt=_fastlin_opt(name, kw, schedule), batch_size=batch, shuffle=False)
    _close(history.lr, lrs)
    _close(history.loss, losses)
    _close(model.weight, W_ref)
    _close(model.bias, b_ref)


@pytest.mark.parametrize("case", [("sgd", dict(lr=0.05, momentum=0.9)), ADAMS[1]], ids=_ids)
def test_a_schedule_continues_across_fit_step_fit(case):
    name, kw = case
    schedule = ("cosine", dict(T_max=25, eta_min=0.002))
    X, T, W, b = _data(4)
    losses, lrs, W_ref, b_ref = _torch_run(X, T, W, b, 60, name, kw, schedule)
    model = fastlin.Linear.from_weights(W, b)
    opt = _fastlin_opt(name, kw, schedule)
    first = model.fit(X, T, steps=20, opt=opt)
    middle = [model.step(X, T, opt) for _ in range(15)]
    last = model.fit(X, T, steps=25, opt=opt)
    _close(np.concatenate([first.loss, middle, last.loss]), losses)
    _close(np.concatenate([first.lr, last.lr]), np.concatenate([lrs[:20], lrs[35:]]))
    _close(model.weight, W_ref)
    _close(model.bias, b_ref)


@pytest.mark.parametrize("via", ["pickle", "deepcopy"])
@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_training_continues_after_a_round_trip(via, name):
    kw = dict(lr=0.05, momentum=0.9) if name == "sgd" else dict(lr=0.02, amsgrad=True)
    X, T, W, b = _data(5)
    schedule = _fastlin_schedule(("step", dict(step_size=4, gamma=0.7)))
    cls = fastlin.SGD if name == "sgd" else fastlin.Adam
    straight = fastlin.Linear.from_weights(W, b)
    opt = cls(**kw, schedule=schedule)
    straight.fit(X, T, steps=30, opt=opt)

    model = fastlin.Linear.from_weights(W, b)
    opt2 = cls(**kw, schedule=schedule)
    model.fit(X, T, steps=12, opt=opt2)
    if via == "pickle":
        model, opt2 = pickle.loads(pickle.dumps((model, opt2)))
    else:
        model, opt2 = copy.deepcopy((model, opt2))
    history = model.fit(X, T, steps=18, opt=opt2)
    np.testing.assert_array_equal(model.weight, straight.weight)
    np.testing.assert_array_equal(model.bias, straight.bias)
    assert history.lr[0] == pytest.approx(schedule.lr_at(kw["lr"], 12), rel=1e-15)


def test_history_lr_without_a_schedule_is_the_constant_rate():
    X, T, W, b = _data(6)
    history = fastlin.Linear.from_weights(W, b).fit(X, T, steps=9, lr=0.03)
    np.testing.assert_array_equal(history.lr, np.full(9, 0.03))


def test_a_callback_that_changes_lr_is_recorded():
    X, T, W, b = _data(7)
    opt = fastlin.Adam(lr=0.01)

    def halve(step, loss):
        opt.lr = opt.lr / 2

    history = fastlin.Linear.from_weights(W, b).fit(X, T, steps=4, opt=opt, callback=halve)
    np.testing.assert_allclose(history.lr, [0.01, 0.005, 0.0025, 0.00125])


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        (dict(lr=0.0), ValueError, "lr"),
        (dict(lr=-1.0), ValueError, "lr"),
        (dict(lr=math.nan), ValueError, "lr"),
        (dict(lr="0.1"), TypeError, "lr"),
        (dict(betas=(0.9,)), TypeError, "betas"),
        (dict(betas=0.9), TypeError, "betas"),
        (dict(betas=(1.0, 0.999)), ValueError, "betas[0]"),
        (dict(betas=(0.9, -0.1)), ValueError, "betas[1]"),
        (dict(betas=(0.9, math.inf)), ValueError, "betas[1]"),
        (dict(eps=-1e-8), ValueError, "eps"),
        (dict(eps=math.inf), ValueError, "eps"),
        (dict(weight_decay=-0.1), ValueError, "weight_decay"),
        (dict(amsgrad=1), TypeError, "amsgrad"),
        (dict(schedule="cosine"), TypeError, "schedule"),
    ],
)
@pytest.mark.parametrize("cls", [fastlin.Adam, fastlin.AdamW])
def test_adam_arguments_are_checked_like_torch(cls, kwargs, exc, fragment):
    with pytest.raises(exc, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        cls(**kwargs)


def test_a_bad_assignment_changes_nothing():
    opt = fastlin.Adam(lr=0.01, betas=(0.8, 0.9))
    record = opt.hyper()
    with pytest.raises(ValueError, match="betas"):
        opt.betas = (0.5, 1.5)
    assert opt.betas == (0.8, 0.9)
    assert opt.hyper() is record  # nothing changed, so the cached record stands
    opt.betas = (0.5, 0.6)
    assert opt.hyper() is not record and opt.hyper()[0]["beta2"] == 0.6


def test_defaults_and_repr_follow_torch():
    adam, adamw = fastlin.Adam(), fastlin.AdamW()
    assert (adam.lr, adam.betas, adam.eps, adam.weight_decay, adam.amsgrad) == (1e-3, (0.9, 0.999), 1e-8, 0.0, False)
    assert adamw.weight_decay == 1e-2
    assert repr(adam) == "Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, amsgrad=False)"
    assert "schedule=" in repr(fastlin.SGD(0.1, schedule=schedules.cosine(T_max=10)))


@pytest.mark.parametrize("cls", [fastlin.Adam, fastlin.AdamW])
def test_a_diverging_adam_step_writes_nothing(cls):
    X, T, W, b = _data(8)
    model = fastlin.Linear.from_weights(W.astype(np.float32), b.astype(np.float32))
    opt = cls(lr=1e39)  # Adam moves each weight by about lr: beyond float32
    with pytest.raises(fastlin.DivergenceError):
        model.step(X.astype(np.float32), T.astype(np.float32), opt)
    np.testing.assert_array_equal(model.weight, W.astype(np.float32))
    np.testing.assert_array_equal(model.bias, b.astype(np.float32))
    state = opt.state_for(model, model._ops)
    assert not np.any(state.slots_w) and not np.any(state.slots_b)
    assert state.counters[abi.CNT_STEP] == 0


def test_adam_keeps_its_moments_in_the_model_dtype():
    X, T, W, b = _data(9)
    model = fastlin.Linear.from_weights(W.astype(np.float32), b.astype(np.float32))
    opt = fastlin.Adam(lr=0.01, amsgrad=True)
    model.fit(X.astype(np.float32), T.astype(np.float32), steps=5, opt=opt)
    state = opt.state_for(model, model._ops)
    assert state.slots_w.shape == (3, O, D) and state.slots_w.dtype == np.float32
    assert np.all(state.slots_w[1] >= 0) and np.all(state.slots_w[2] >= state.slots_w[1])


def test_momentum_set_after_some_steps_starts_an_empty_buffer_and_keeps_the_schedule():
    X, T, W, b = _data(10)
    model = fastlin.Linear.from_weights(W, b)
    opt = fastlin.SGD(0.05, schedule=schedules.step(step_size=3, gamma=0.5))
    model.fit(X, T, steps=4, opt=opt)
    opt.momentum = 0.9
    history = model.fit(X, T, steps=2, opt=opt)
    np.testing.assert_allclose(history.lr, [0.025, 0.025])  # steps 4 and 5: 0.05 · 0.5 ** (k // 3)
    state = opt.state_for(model, model._ops)
    assert state.slots_w.shape[0] == 1 and state.counters[abi.CNT_STEP] == 6


def test_epoch_callback_sees_each_epochs_mean_loss_and_can_stop():
    X, T, W, b = _data(11)
    seen = []

    def on_epoch(epoch, loss):
        seen.append((epoch, loss))
        return epoch == 3

    model = fastlin.Linear.from_weights(W, b)
    history = model.fit(X, T, epochs=10, batch_size=10, shuffle=False, lr=0.01, epoch_callback=on_epoch)
    assert [e for e, _ in seen] == [1, 2, 3] and history.stopped_early
    assert len(history.loss) == 3 * 4  # 37 rows in batches of 10: 4 steps an epoch
    rows = np.array([10, 10, 10, 7])
    for epoch, loss in seen:
        step_losses = history.loss[(epoch - 1) * 4 : epoch * 4]
        assert loss == pytest.approx(float(step_losses @ rows / rows.sum()), rel=1e-14)


def test_the_readme_warmup_and_cosine_example_does_what_it_says():
    """The README's optimiser block, run after the tour's set-up, gives the rates it prints."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("### Optimisers and learning-rate schedules") :]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    rng = np.random.default_rng(0)
    model = fastlin.Linear(5, 2, init="uniform01", dtype=np.float64, seed=rng)
    scope = {"fastlin": fastlin, "np": np, "model": model, "x": rng.random(5), "y": rng.random(2)}
    exec(compile(block, "README.md", "exec"), scope)
    lr = scope["history"].lr
    assert len(lr) == 100
    np.testing.assert_allclose(lr[:2], [0.005, 0.0095], rtol=1e-12)
    assert lr[10] == 0.05 and lr[-1] < 1e-4 and np.all(np.diff(lr[10:]) < 0)
