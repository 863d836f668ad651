"""rules.update_element, compiled with numba.njit as the CPU backend compiles
it: 100 optimiser steps of a random float64 parameter vector under a random
gradient sequence, against torch.optim.SGD / Adam / AdamW (when torch is
importable) and against a hand-written float64 reference (always), within
1e-9 relative.  Also rules.slot_count, and the rule and schedule together.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest

from fastlin import schedules
from fastlin.backends import abi, rules

_update = numba.njit(inline="always")(rules.update_element)
_scheduled_lr = numba.njit(inline="always")(rules.scheduled_lr)
_lr_now = numba.njit(rules.scheduled_lr)  # callable from Python, as the host sees it

N_STEPS = 100
N_PARAMS = 37


def make_hyper(rule, lr, *, schedule=None, **fields):
    hyper = abi.new_hyper()
    rec = hyper[0]
    rec["rule"] = rule
    rec["lr"] = lr
    for name, value in fields.items():
        rec[name] = value
    (schedule or schedules.constant()).encode(rec)
    return hyper


def sgd_hyper(lr=0.05, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, schedule=None):
    return make_hyper(
        abi.RULE_SGD,
        lr,
        schedule=schedule,
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        weight_decay=weight_decay,
    )


def adam_hyper(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, decoupled=False, schedule=None):
    return make_hyper(
        abi.RULE_ADAM,
        lr,
        schedule=schedule,
        beta1=betas[0],
        beta2=betas[1],
        eps=eps,
        weight_decay=weight_decay,
        amsgrad=amsgrad,
        decoupled=decoupled,
    )


def problem(seed):
    """A parameter vector and 100 gradients: mixed scales, signs, a few exact zeros."""
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(N_PARAMS) * np.exp(rng.uniform(-2, 2, N_PARAMS))
    grads = rng.standard_normal((N_STEPS, N_PARAMS)) * np.exp(rng.uniform(-3, 1, (1, N_PARAMS)))
    grads[rng.random(grads.shape) < 0.03] = 0.0
    return p, grads


def run_rule(hyper, p, grads):
    """Python loop over steps and elements, calling the compiled rule as a kernel
    would: returns the parameters and the three slots after every step."""
    hp = hyper[0]
    p = p.copy()
    slots = np.zeros((3, p.size))
    has_buf = False
    history = []
    for step, g in enumerate(grads):
        lr = _lr_now(hp, step)
        for i in range(p.size):
            p[i], slots[0, i], slots[1, i], slots[2, i] = _update(
                hp, lr, step, has_buf, p[i], g[i], slots[0, i], slots[1, i], slots[2, i]
            )
        has_buf = True
        history.append((p.copy(), slots.copy()))
    return history


@numba.njit
def _run_inlined(hyper, p, grads, slots):
    """The same loop compiled whole, with both rules inlined (the backends' use)."""
    hp = hyper[0]
    for step in range(grads.shape[0]):
        lr = _scheduled_lr(hp, step)
        for i in range(p.shape[0]):
            p[i], slots[0, i], slots[1, i], slots[2, i] = _update(
                hp, lr, step, step > 0, p[i], grads[step, i], slots[0, i], slots[1, i], slots[2, i]
            )


def rel_err(got, want):
    """Worst elementwise relative difference, against max(|want|, 1e-6 * max|want|)."""
    got, want = np.asarray(got), np.asarray(want)
    scale = np.maximum(np.abs(want), 1e-6 * max(float(np.abs(want).max()), 1e-300))
    return float(np.max(np.abs(got - want) / scale))


# ------------------------------------------------------------------- cases

SGD_CASES = {
    "plain": {},
    "weight_decay": {"weight_decay": 0.1},
    "momentum": {"momentum": 0.9},
    "dampening": {"momentum": 0.9, "dampening": 0.3},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "momentum+wd": {"momentum": 0.5, "weight_decay": 0.01},
    "nesterov+wd": {"momentum": 0.8, "nesterov": True, "weight_decay": 0.05},
    "dampening+wd": {"momentum": 0.99, "dampening": 0.9, "weight_decay": 1e-3},
}

ADAM_CASES = {
    "adam": {},
    "adam-wd": {"weight_decay": 0.05},
    "adam-amsgrad": {"amsgrad": True},
    "adam-amsgrad-wd": {"amsgrad": True, "weight_decay": 0.02},
    "adam-low-betas": {"betas": (0.3, 0.8), "eps": 1e-6},  # 1 - beta1 > 0.5: torch's other lerp
    "adam-beta1-0": {"betas": (0.0, 0.5), "amsgrad": True},
    "adamw": {"weight_decay": 1e-2, "decoupled": True},
    "adamw-amsgrad": {"weight_decay": 0.1, "amsgrad": True, "decoupled": True},
    "adamw-wd0": {"weight_decay": 0.0, "decoupled": True},
    "adamw-low-betas": {"betas": (0.45, 0.9), "weight_decay": 0.3, "decoupled": True},
}


# ---------------------------------------------------- float64 hand reference


def reference_sgd(p, grads, lr=0.05, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, lrs=None):
    """SGD as torch documents it (v_1 = g_1, v_t = mu v_{t-1} + (1 - tau) g_t), vectorised float64."""
    p, buf, out = p.copy(), None, []
    for t, g in enumerate(grads):
        g = g + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - (lrs[t] if lrs is not None else lr) * g
        out.append((p, buf))
    return out


def reference_adam(
    p, grads, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, decoupled=False, lrs=None
):
    """Adam (Kingma & Ba, with L2 or decoupled decay and amsgrad) in the paper's form:
    p -= lr * m_hat / (sqrt(v_hat) + eps), m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)."""
    b1, b2 = betas
    p, m, v, vmax, out = p.copy(), np.zeros_like(p), np.zeros_like(p), np.zeros_like(p), []
    for k, g in enumerate(grads):
        t = k + 1
        step_lr = lrs[k] if lrs is not None else lr
        if decoupled:
            p = p - step_lr * weight_decay * p
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        v_hat = (vmax if amsgrad else v) / (1 - b2**t)
        p = p - step_lr * (m / (1 - b1**t)) / (np.sqrt(v_hat) + eps)
        out.append((p, m, v, vmax))
    return out


@pytest.mark.parametrize("name", list(SGD_CASES))
def test_sgd_matches_a_float64_reference(name):
    kw = SGD_CASES[name]
    p0, grads = problem(1)
    got = run_rule(sgd_hyper(**kw), p0, grads)
    want = reference_sgd(p0, grads, **kw)
    for (gp, gs), (wp, wbuf) in zip(got, want, strict=True):
        assert rel_err(gp, wp) <= 1e-9
        if kw.get("momentum"):
            assert rel_err(gs[0], wbuf) <= 1e-9
        else:
            assert not gs.any()  # no momentum: the slot is never touched
    assert rel_err(got[-1][0], p0) > 1e-3  # the parameters did move


@pytest.mark.parametrize("name", list(ADAM_CASES))
def test_adam_matches_a_float64_reference(name):
    kw = ADAM_CASES[name]
    p0, grads = problem(2)
    got = run_rule(adam_hyper(**kw), p0, grads)
    want = reference_adam(p0, grads, **kw)
    for (gp, gs), (wp, m, v, vmax) in zip(got, want, strict=True):
        assert rel_err(gp, wp) <= 1e-9
        assert rel_err(gs[0], m) <= 1e-9
        assert rel_err(gs[1], v) <= 1e-9
        if kw.get("amsgrad"):
            assert rel_err(gs[2], vmax) <= 1e-9
        else:
            assert not gs[2].any()  # without amsgrad the third slot is never touched
    assert rel_err(got[-1][0], p0) > 1e-3


# ------------------------------------------------------------------ torch


def torch_history(make_opt, p0, grads, make_sched=None):
    """torch's parameter and optimiser state after each of the steps."""
    torch = pytest.importorskip("torch")
    param = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    opt = make_opt(torch.optim, [param])
    sched = make_sched(torch.optim.lr_scheduler, opt) if make_sched else None
    out = []
    for g in grads:
        param.grad = torch.from_numpy(g.copy())
        opt.step()
        if sched is not None:
            sched.step()
        state = opt.state[param]
        out.append(
            (
                param.detach().numpy().copy(),
                {k: v.numpy().copy() for k, v in state.items() if k != "step" and v is not None},
            )
        )
    return out


def worst(got, want, keys):
    """The worst relative difference over every step, of p and of the named state."""
    err = 0.0
    for (gp, gs), (wp, ws) in zip(got, want, strict=True):
        err = max(err, rel_err(gp, wp))
        for slot, key in keys:
            err = max(err, rel_err(gs[slot], ws[key]))
    return err


@pytest.mark.parametrize("name", list(SGD_CASES))
def test_sgd_matches_torch(name):
    pytest.importorskip("torch")
    kw = SGD_CASES[name]
    p0, grads = problem(3)
    got = run_rule(sgd_hyper(**kw), p0, grads)
    want = torch_history(lambda optim, ps: optim.SGD(ps, lr=0.05, foreach=False, **kw), p0, grads)
    keys = [(0, "momentum_buffer")] if kw.get("momentum") else []
    assert worst(got, want, keys) <= 1e-9


ADAM_KEYS = [(0, "exp_avg"), (1, "exp_avg_sq")]


@pytest.mark.parametrize("name", list(ADAM_CASES))
def test_adam_and_adamw_match_torch(name):
    pytest.importorskip("torch")
    kw = dict(ADAM_CASES[name])
    decoupled = kw.pop("decoupled", False)
    p0, grads = problem(4)
    got = run_rule(adam_hyper(decoupled=decoupled, **kw), p0, grads)

    def make(optim, ps):
        # torch.optim.AdamW is the class users call for decoupled decay
        return (optim.AdamW if decoupled else optim.Adam)(ps, lr=1e-2, foreach=False, **kw)

    want = torch_history(make, p0, grads)
    keys = ADAM_KEYS + ([(2, "max_exp_avg_sq")] if kw.get("amsgrad") else [])
    assert worst(got, want, keys) <= 1e-9


# The rule and the schedule together, as a fit uses them: the step's rate
# comes from scheduled_lr of the same step count.
SCHEDULED = [
    ("sgd-momentum-cosine", "sgd", {"momentum": 0.9}, schedules.cosine(30, eta_min=1e-3)),
    ("sgd-nesterov-step", "sgd", {"momentum": 0.8, "nesterov": True, "weight_decay": 0.01}, schedules.step(9, 0.5)),
    ("adam-linear-warmup", "adam", {"amsgrad": True}, schedules.linear(0.1, 1.0, 20)),
    ("adamw-exponential", "adamw", {"weight_decay": 0.05}, schedules.exponential(0.97)),
    ("adam-inverse-scaling", "adam", {"weight_decay": 0.01}, schedules.inverse_scaling(0.5)),
    # a warm-up in front (torch: SequentialLR of a LinearLR and the schedule)
    ("adam-warmup-cosine", "adam", {}, schedules.warmup(schedules.cosine(60, eta_min=1e-4), 10)),
    ("adamw-warmup-constant", "adamw", {"weight_decay": 0.1}, schedules.warmup(schedules.constant(), 25, 0.05)),
    ("sgd-warmup-step", "sgd", {"momentum": 0.9}, schedules.warmup(schedules.step(11, 0.5), 7, start_factor=0.3)),
    ("adam-warmup-inverse-scaling", "adam", {"amsgrad": True}, schedules.warmup(schedules.inverse_scaling(), 4)),
]

TORCH_SCHEDULER = {
    "cosine": "CosineAnnealingLR",
    "step": "StepLR",
    "linear": "LinearLR",
    "exponential": "ExponentialLR",
}


def torch_scheduler(lr_scheduler, opt, schedule):
    """torch's scheduler for ``schedule``: a warm-up is SequentialLR([LinearLR, S]),
    or the LinearLR alone before a constant; inverse scaling is a LambdaLR."""
    if schedule.kind == "warmup":
        ramp = lr_scheduler.LinearLR(opt, schedule.start_factor, 1.0, total_iters=schedule.steps)
        if schedule.schedule.kind == "constant":
            return ramp
        after = torch_scheduler(lr_scheduler, opt, schedule.schedule)
        return lr_scheduler.SequentialLR(opt, [ramp, after], milestones=[schedule.steps])
    if schedule.kind == "inverse_scaling":
        power_t = schedule.power_t
        return lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (k + 1.0) ** power_t)
    return getattr(lr_scheduler, TORCH_SCHEDULER[schedule.kind])(opt, **schedule.params)


@pytest.mark.parametrize("name, kind, kw, schedule", SCHEDULED, ids=[c[0] for c in SCHEDULED])
def test_rules_with_a_schedule(name, kind, kw, schedule):
    p0, grads = problem(5)
    lr = 0.05 if kind == "sgd" else 1e-2
    hyper = (
        sgd_hyper(lr=lr, schedule=schedule, **kw)
        if kind == "sgd"
        else adam_hyper(lr=lr, schedule=schedule, decoupled=kind == "adamw", **kw)
    )
    got = run_rule(hyper, p0, grads)
    lrs = [schedule.lr_at(lr, k) for k in range(N_STEPS)]
    if kind == "sgd":
        want_p = [wp for wp, _ in reference_sgd(p0, grads, lrs=lrs, **kw)]
    else:
        want_p = [w[0] for w in reference_adam(p0, grads, lrs=lrs, decoupled=kind == "adamw", **kw)]
    assert max(rel_err(gp, wp) for (gp, _), wp in zip(got, want_p, strict=True)) <= 1e-9
    pytest.importorskip("torch")

    def make(optim, ps):
        if kind == "sgd":
            return optim.SGD(ps, lr=lr, foreach=False, **kw)
        return (optim.AdamW if kind == "adamw" else optim.Adam)(ps, lr=lr, foreach=False, **kw)

    # inverse scaling is scikit-learn's; torch has it as a LambdaLR
    want = torch_history(make, p0, grads, lambda s, opt: torch_scheduler(s, opt, schedule))
    keys = (
        [(0, "momentum_buffer")]
        if kind == "sgd"
        else ADAM_KEYS + ([(2, "max_exp_avg_sq")] if kw.get("amsgrad") else [])
    )
    assert worst(got, want, keys) <= 1e-9


@pytest.mark.parametrize(
    "hyper",
    [
        sgd_hyper(momentum=0.9, nesterov=True),
        adam_hyper(amsgrad=True, weight_decay=0.1),
        sgd_hyper(momentum=0.5, schedule=schedules.warmup(schedules.cosine(40, eta_min=1e-3), 15, 0.2)),
    ],
)
def test_inlined_into_a_compiled_loop_gives_the_same_numbers(hyper):
    p0, grads = problem(6)
    p, slots = p0.copy(), np.zeros((3, p0.size))
    _run_inlined(hyper, p, grads, slots)
    last_p, last_slots = run_rule(hyper, p0, grads)[-1]
    np.testing.assert_array_equal(p, last_p)
    np.testing.assert_array_equal(slots, last_slots)


# ------------------------------------------------------------- edge cases


def test_sgd_first_step_sets_the_buffer_to_the_gradient():
    """torch's first momentum step takes buf = g (no dampening); later ones mix."""
    hp = sgd_hyper(lr=0.5, momentum=0.9, dampening=0.5)[0]
    p, s0, s1, s2 = _update(hp, 0.5, 0, False, 1.0, 2.0, 123.0, 7.0, 8.0)
    assert (p, s0, s1, s2) == (0.0, 2.0, 7.0, 8.0)
    p, s0, _, _ = _update(hp, 0.5, 1, True, 1.0, 2.0, 4.0, 7.0, 8.0)
    assert s0 == 0.9 * 4.0 + 0.5 * 2.0 and p == 1.0 - 0.5 * s0


def test_sgd_without_momentum_leaves_every_slot_alone():
    hp = sgd_hyper(lr=0.1, weight_decay=0.5)[0]
    assert _update(hp, 0.1, 3, True, 2.0, 1.0, 5.0, 6.0, 7.0) == (2.0 - 0.1 * (1.0 + 0.5 * 2.0), 5.0, 6.0, 7.0)


def test_adam_first_step_moves_by_lr():
    """Bias correction: the first step is -lr * sign(g) (up to eps), whatever |g|."""
    hp = adam_hyper(lr=1e-3, eps=0.0)[0]
    for g in (1e-6, 3.0, -250.0):
        p, m, v, untouched = _update(hp, 1e-3, 0, False, 1.0, g, 0.0, 0.0, -1.0)
        assert p == pytest.approx(1.0 - 1e-3 * math.copysign(1.0, g), rel=1e-15)
        assert m == pytest.approx(0.1 * g, rel=1e-15) and v == pytest.approx(0.001 * g * g, rel=1e-15)
        assert untouched == -1.0


def test_amsgrad_keeps_the_running_maximum_and_propagates_nan():
    hp = adam_hyper(amsgrad=True)[0]
    _, _, v, vmax = _update(hp, 1e-2, 5, True, 1.0, 0.0, 0.0, 1.0, 5.0)
    assert v == 0.999 and vmax == 5.0
    _, _, v, vmax = _update(hp, 1e-2, 5, True, 1.0, 10.0, 0.0, 1.0, 0.5)
    assert vmax == v == pytest.approx(0.999 + 0.001 * 100.0, rel=1e-15)
    assert math.isnan(_update(hp, 1e-2, 5, True, 1.0, math.nan, 0.0, 1.0, 0.5)[3])
    assert math.isnan(_update(hp, 1e-2, 5, True, 1.0, 1.0, 0.0, 1.0, math.nan)[3])


def test_nonfinite_inputs_come_out_nonfinite():
    """The kernels' check-then-write relies on NaN/Inf reaching the results."""
    for hp in (sgd_hyper(momentum=0.9)[0], adam_hyper(amsgrad=True)[0], adam_hyper(decoupled=True)[0]):
        for g in (math.nan, math.inf):
            out = _update(hp, 1e-2, 3, True, 1.0, g, 0.1, 0.2, 0.3)
            assert not all(math.isfinite(x) for x in out)
    assert not math.isfinite(_update(sgd_hyper()[0], math.inf, 0, False, 1.0, 1.0, 0.0, 0.0, 0.0)[0])


def test_an_unknown_rule_gives_nan():
    hyper = sgd_hyper()
    hyper[0]["rule"] = 7
    p, s0, s1, s2 = _update(hyper[0], 0.1, 0, False, 1.0, 1.0, 2.0, 3.0, 4.0)
    assert math.isnan(p) and (s0, s1, s2) == (2.0, 3.0, 4.0)


def test_the_rules_run_as_plain_python_on_a_numpy_record():
    """No numba needed: the same functions on hyper[0] (np.void) give the compiled numbers."""
    for hyper in (sgd_hyper(momentum=0.9, weight_decay=0.1), adam_hyper(amsgrad=True, weight_decay=0.1)):
        args = (hyper[0], 1e-2, 4, True, 0.7, -0.3, 0.05, 0.02, 0.03)
        np.testing.assert_allclose(rules.update_element(*args), _update(*args), rtol=1e-15)


def test_slot_count():
    assert rules.slot_count(abi.RULE_SGD, 0.0, False) == 0
    assert rules.slot_count(abi.RULE_SGD, 0.9, False) == 1
    assert rules.slot_count(abi.RULE_SGD, 0.9, True) == 1  # amsgrad means nothing to SGD
    assert rules.slot_count(abi.RULE_ADAM, 0.0, False) == 2
    assert rules.slot_count(abi.RULE_ADAM, 0.9, True) == 3
    with pytest.raises(ValueError, match="unknown optimiser rule"):
        rules.slot_count(5, 0.0, False)


def test_rules_module_imports_neither_numba_nor_numpy():
    """The backends compile it; it must stay importable and compilable as plain Python."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(rules))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert imported <= {"math"}, imported
