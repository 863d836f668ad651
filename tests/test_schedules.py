"""fastlin.schedules and rules.scheduled_lr: against torch's schedulers, a
hand-written float64 reference, and each other.

The rate of the 0-based optimiser step k must equal torch's
``param_groups[0]["lr"]`` after k calls of ``scheduler.step()``, for k up
to hundreds (past CosineAnnealingLR's T_max and LinearLR's total_iters),
within 1e-9 relative.  Where the rate itself is (nearly) zero, a relative
error means nothing, so differences are measured against max(|rate|,
1e-6 * base_lr).  A ``warmup`` is checked against torch's ``SequentialLR``
of a ``LinearLR`` and the wrapped schedule's scheduler (``LambdaLR`` for
inverse scaling, the ``LinearLR`` alone for a constant).
"""

from __future__ import annotations

import copy
import math
import pickle

import numba
import numpy as np
import pytest

import fastlin
from fastlin import schedules
from fastlin.backends import abi, rules

_scheduled_lr = numba.njit(inline="always")(rules.scheduled_lr)


@numba.njit
def _njit_rates(hyper, first, out):
    """Rates of steps first .. first + len(out) - 1, the way a kernel asks for them."""
    hp = hyper[0]
    for i in range(out.shape[0]):
        out[i] = _scheduled_lr(hp, first + i)


def kernel_rates(schedule, base_lr, n, first=0):
    hyper = abi.new_hyper()
    hyper[0]["lr"] = base_lr
    schedule.encode(hyper[0])
    out = np.empty(n)
    _njit_rates(hyper, first, out)
    return out


def rel_err(got, want, base_lr):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-6 * base_lr)))


# torch's scheduler for each kind; fastlin's parameter names are torch's, so
# a schedule's params are the scheduler's keyword arguments.
TORCH_CLASS = {"step": "StepLR", "exponential": "ExponentialLR", "cosine": "CosineAnnealingLR", "linear": "LinearLR"}

# Every kind, several parameter sets each, chosen to reach the awkward places:
# T_max = 1 and steps far past T_max, eta_min above 0 (and above the base
# rate), linear decays to 0, total_iters = 0 and 1, gamma above 1.
TORCH_CASES = [
    schedules.constant(),
    schedules.step(1, 0.9),
    schedules.step(7),
    schedules.step(30, gamma=0.5),
    schedules.step(4, gamma=1.05),
    schedules.exponential(0.99),
    schedules.exponential(0.5),
    schedules.exponential(1.002),
    schedules.cosine(1),
    schedules.cosine(2, eta_min=0.001),
    schedules.cosine(17),
    schedules.cosine(100, eta_min=0.01),
    schedules.cosine(250),
    schedules.cosine(30, eta_min=0.5),  # above the base rate 0.1: the curve rises
    schedules.linear(),
    schedules.linear(0.5, 0.0, 100),
    schedules.linear(1.0, 0.1, 37),
    schedules.linear(0.25, 0.75, 1),
    schedules.linear(0.2, 1.0, 0),
    schedules.linear(1.0, 1.0, 10),
]


def torch_scheduler(lr_scheduler, opt, schedule):
    """torch's scheduler for ``schedule`` on ``opt``; None for a constant rate."""
    if schedule.kind == "warmup":
        ramp = lr_scheduler.LinearLR(
            opt, start_factor=schedule.start_factor, end_factor=1.0, total_iters=schedule.steps
        )
        after = torch_scheduler(lr_scheduler, opt, schedule.schedule)
        if after is None:
            return ramp  # a constant after the warm-up: LinearLR alone
        return lr_scheduler.SequentialLR(opt, [ramp, after], milestones=[schedule.steps])
    if schedule.kind == "inverse_scaling":
        power_t = schedule.power_t
        return lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (k + 1.0) ** power_t)
    name = TORCH_CLASS.get(schedule.kind)
    return getattr(lr_scheduler, name)(opt, **schedule.params) if name else None


def torch_rates(schedule, base_lr, n):
    """torch's lr for optimiser steps 0 .. n-1 (one scheduler.step() after each)."""
    torch = pytest.importorskip("torch")
    param = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([param], lr=base_lr)
    sched = torch_scheduler(torch.optim.lr_scheduler, opt, schedule)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        param.grad = torch.zeros_like(param)
        opt.step()
        if sched is not None:
            sched.step()
    return np.array(out)


@pytest.mark.parametrize("schedule", TORCH_CASES, ids=repr)
def test_rates_match_torch_schedulers(schedule):
    pytest.importorskip("torch")
    for base_lr in (0.1, 3.0):
        want = torch_rates(schedule, base_lr, 301)
        got = kernel_rates(schedule, base_lr, 301)
        assert rel_err(got, want, base_lr) <= 1e-9, (base_lr, rel_err(got, want, base_lr))
        by_method = [schedule.lr_at(base_lr, k) for k in range(301)]
        assert rel_err(by_method, want, base_lr) <= 1e-9


# A warm-up in front of every kind: one step and many, start_factor 1 (no
# ramp, only the shift) and tiny, a warm-up longer than the schedule's own
# period, and one that ends exactly at the last step compared (300).
WARMUP_CASES = [
    schedules.warmup(schedules.constant(), 10),
    schedules.warmup(schedules.constant(), 1, start_factor=1.0),
    schedules.warmup(schedules.step(7, 0.5), 5, start_factor=0.25),
    schedules.warmup(schedules.step(1, 0.9), 1),
    schedules.warmup(schedules.step(30, gamma=1.05), 300),
    schedules.warmup(schedules.exponential(0.99), 20),
    schedules.warmup(schedules.exponential(1.002), 3, start_factor=0.5),
    schedules.warmup(schedules.cosine(100), 10),  # the README's loop
    schedules.warmup(schedules.cosine(1), 2, start_factor=0.01),
    schedules.warmup(schedules.cosine(17, eta_min=0.001), 17, start_factor=1e-3),
    schedules.warmup(schedules.cosine(250, eta_min=0.01), 50, start_factor=1.0),
    schedules.warmup(schedules.cosine(30, eta_min=0.5), 7),  # eta_min above the base rate 0.1
    schedules.warmup(schedules.linear(), 4),
    schedules.warmup(schedules.linear(0.5, 0.0, 100), 25, start_factor=0.3),
    schedules.warmup(schedules.linear(1.0, 0.1, 1), 1, start_factor=0.9),
    schedules.warmup(schedules.inverse_scaling(), 10),
    schedules.warmup(schedules.inverse_scaling(0.5), 1),
    schedules.warmup(schedules.inverse_scaling(-0.1), 3, start_factor=0.9),
]


@pytest.mark.parametrize("schedule", WARMUP_CASES, ids=repr)
def test_warmup_rates_match_torch_sequential_lr(schedule):
    """torch's SequentialLR restarts the second scheduler at position 0 at the
    milestone (``_update_lr(0)``, its closed form), so step ``steps`` has the
    schedule's first rate; one scheduler.step() per optimiser step, as above."""
    pytest.importorskip("torch")
    for base_lr in (0.1, 3.0):
        want = torch_rates(schedule, base_lr, 301)
        got = kernel_rates(schedule, base_lr, 301)
        assert rel_err(got, want, base_lr) <= 1e-9, (base_lr, rel_err(got, want, base_lr))
        by_method = [schedule.lr_at(base_lr, k) for k in range(301)]
        assert rel_err(by_method, want, base_lr) <= 1e-9
        steps = schedule.steps
        assert want[0] == pytest.approx(base_lr * schedule.start_factor, rel=1e-12)  # torch's first rate
        if steps <= 300:
            # torch's rate at the milestone is the wrapped schedule's first
            assert want[steps] == pytest.approx(schedule.schedule.lr_at(base_lr, 0), rel=1e-12)


def test_warmup_before_linear_without_iterations():
    """``linear(total_iters=0)`` keeps ``lr * start_factor`` after a warm-up, as
    it does alone.  torch's SequentialLR raises ZeroDivisionError at the
    milestone here (it restarts the LinearLR with its closed form, which
    divides by total_iters); before that its rates are compared."""
    schedule = schedules.warmup(schedules.linear(0.2, 1.0, 0), 3)
    got = kernel_rates(schedule, 0.5, 50)
    np.testing.assert_array_equal(got[3:], 0.5 * 0.2)
    assert rel_err(got[:3], [0.05, 0.05 + 0.15, 0.05 + 0.3], 0.5) <= 1e-15
    torch = pytest.importorskip("torch")
    param = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([param], lr=0.5)
    sched = torch_scheduler(torch.optim.lr_scheduler, opt, schedule)
    want = []
    try:
        for _ in range(50):
            want.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    except ZeroDivisionError:
        assert len(want) == 3  # at the milestone (a later torch may not raise: then all 50 compare)
    assert rel_err(got[: len(want)], want, 0.5) <= 1e-9


@pytest.mark.parametrize(
    "schedule",
    [
        schedules.cosine(1000),
        schedules.cosine(300, eta_min=0.02),
        schedules.exponential(0.999),
        schedules.step(3, 0.99),
        schedules.warmup(schedules.cosine(1000), 100),
        schedules.warmup(schedules.exponential(0.999), 400, start_factor=0.01),
    ],
    ids=repr,
)
def test_rates_match_torch_over_thousands_of_steps(schedule):
    """Closed forms against torch's recurrences: the drift stays far below 1e-9."""
    pytest.importorskip("torch")
    want = torch_rates(schedule, 0.1, 4000)
    got = kernel_rates(schedule, 0.1, 4000)
    assert rel_err(got, want, 0.1) <= 1e-9


def reference_rate(schedule, base_lr, k):
    """The textbook formulas, in plain float64 (no torch needed)."""
    p = schedule.params
    if schedule.kind == "warmup":
        if k < p["steps"]:
            return base_lr * (p["start_factor"] + (1 - p["start_factor"]) * k / p["steps"])
        return reference_rate(p["schedule"], base_lr, k - p["steps"])
    if schedule.kind == "constant":
        return base_lr
    if schedule.kind == "step":
        return base_lr * p["gamma"] ** (k // p["step_size"])
    if schedule.kind == "exponential":
        return base_lr * p["gamma"] ** k
    if schedule.kind == "cosine":
        return p["eta_min"] + (base_lr - p["eta_min"]) * (1 + math.cos(math.pi * k / p["T_max"])) / 2
    if schedule.kind == "linear":
        if p["total_iters"] == 0:
            return base_lr * p["start_factor"]
        frac = min(k, p["total_iters"]) / p["total_iters"]
        return base_lr * (p["start_factor"] + (p["end_factor"] - p["start_factor"]) * frac)
    if schedule.kind == "inverse_scaling":
        return base_lr / (k + 1) ** p["power_t"]
    raise AssertionError(schedule.kind)


REFERENCE_CASES = TORCH_CASES + [
    schedules.inverse_scaling(),
    schedules.inverse_scaling(0.5),
    schedules.inverse_scaling(1.0),
    schedules.inverse_scaling(-0.1),
    schedules.inverse_scaling(0.0),
    *WARMUP_CASES,
    schedules.warmup(schedules.linear(0.2, 1.0, 0), 3),
    schedules.warmup(schedules.cosine(1000, eta_min=0.001), 1000, start_factor=0.05),
]


@pytest.mark.parametrize("schedule", REFERENCE_CASES, ids=repr)
def test_rates_match_a_float64_reference(schedule):
    base_lr = 0.37
    ks = list(range(301)) + [997, 1000, 1001, 4321]
    want = [reference_rate(schedule, base_lr, k) for k in ks]
    got = np.concatenate(
        [kernel_rates(schedule, base_lr, 301), [kernel_rates(schedule, base_lr, 1, k)[0] for k in ks[301:]]]
    )
    # the textbook cosine loses digits to cancellation near its minimum
    # (1 + cos(x) for x near pi), hence 1e-9 of max(rate, 1e-6 lr) here too
    assert rel_err(got, want, base_lr) <= 1e-9
    assert rel_err([schedule.lr_at(base_lr, k) for k in ks], want, base_lr) <= 1e-9


def test_inverse_scaling_is_sklearns_invscaling():
    """scikit-learn's SGDRegressor: eta = eta0 / t ** power_t, with t = 1 for the first update."""
    s = schedules.inverse_scaling(power_t=0.3)
    assert s.lr_at(0.01, 0) == 0.01
    assert s.lr_at(0.01, 9) == pytest.approx(0.01 / 10**0.3, rel=1e-15)
    assert kernel_rates(s, 0.01, 10)[9] == pytest.approx(0.01 / 10**0.3, rel=1e-15)


@pytest.mark.parametrize("schedule", REFERENCE_CASES, ids=repr)
def test_lr_at_computes_what_the_kernel_computes(schedule):
    ks = np.arange(0, 3000, 7)
    got = [schedule.lr_at(0.05, int(k)) for k in ks]
    want = [kernel_rates(schedule, 0.05, 1, int(k))[0] for k in ks]
    # the same code and the same libm: equal but for pow/sin rounding that
    # may differ between numba's and numpy's calls on other platforms
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)


def test_overflow_and_underflow_follow_ieee_in_both():
    """Python floats raise OverflowError where compiled code gives Inf; lr_at must not."""
    grow = schedules.exponential(2.0)
    assert grow.lr_at(1.0, 5000) == math.inf == kernel_rates(grow, 1.0, 1, 5000)[0]
    shrink = schedules.step(1, gamma=1e-3)
    assert shrink.lr_at(1.0, 500) == 0.0 == kernel_rates(shrink, 1.0, 1, 500)[0]
    assert schedules.inverse_scaling(-300.0).lr_at(1.0, 10**6) == math.inf
    assert (
        schedules.inverse_scaling(300.0).lr_at(1.0, 10**6)
        == 0.0
        == kernel_rates(schedules.inverse_scaling(300.0), 1.0, 1, 10**6)[0]
    )


def test_an_unknown_schedule_code_gives_nan():
    hyper = abi.new_hyper()
    hyper[0]["lr"] = 0.1
    hyper[0]["schedule"] = 99
    out = np.empty(2)
    _njit_rates(hyper, 0, out)
    assert np.isnan(out).all()
    # during a warm-up too, and after it
    for code in (99, -1, abi.SCHEDULE_INVERSE_SCALING + 1):
        schedules.warmup(schedules.cosine(4), 5).encode(hyper[0])
        hyper[0]["schedule"] = code
        out = np.empty(12)
        _njit_rates(hyper, 0, out)
        assert np.isnan(out).all(), code
        assert math.isnan(rules.scheduled_lr(hyper[0], 0))


def test_schedule_codes_are_the_range_that_scheduled_lr_checks():
    """scheduled_lr's warm-up refuses codes outside SCHEDULE_CONSTANT ..
    SCHEDULE_INVERSE_SCALING: abi's codes must be exactly that range."""
    codes = sorted(getattr(abi, name) for name in dir(abi) if name.startswith("SCHEDULE_"))
    assert codes == list(range(abi.SCHEDULE_CONSTANT, abi.SCHEDULE_INVERSE_SCALING + 1))


def test_warmup_ramps_then_starts_the_schedule_from_its_peak():
    lr = 0.4
    s = schedules.warmup(schedules.cosine(100, eta_min=0.004), 10)
    rates = kernel_rates(s, lr, 111)
    assert rates[0] == pytest.approx(0.1 * lr, rel=1e-15)
    assert rates[9] == pytest.approx(lr * (0.1 + 0.9 * 9 / 10), rel=1e-15)
    assert rates[10] == lr  # the cosine's first step, exactly its peak
    assert rates[110] == 0.004  # its minimum, T_max steps after the warm-up
    assert np.all(np.diff(rates[:11]) > 0) and np.all(np.diff(rates[10:]) < 0)
    np.testing.assert_array_equal(rates[10:], kernel_rates(schedules.cosine(100, eta_min=0.004), lr, 101))
    # after the warm-up, any schedule is itself shifted by the warm-up's length
    for inner in (schedules.step(3, 0.5), schedules.linear(0.3, 0.9, 8), schedules.inverse_scaling(0.7)):
        np.testing.assert_array_equal(
            kernel_rates(schedules.warmup(inner, 6, 0.5), lr, 40, first=6), kernel_rates(inner, lr, 40)
        )
    flat = schedules.warmup(schedules.constant(), 4, start_factor=0.2)
    assert [flat.lr_at(1.0, k) for k in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0], rel=1e-15)
    assert flat.lr_at(1.0, 10**9) == 1.0


def test_warmup_overflow_follows_ieee_as_the_kernel_does():
    grow = schedules.warmup(schedules.exponential(2.0), 10)
    assert grow.lr_at(1.0, 5010) == math.inf == kernel_rates(grow, 1.0, 1, 5010)[0]
    assert grow.lr_at(1.0, 9) == kernel_rates(grow, 1.0, 1, 9)[0] == pytest.approx(0.91, rel=1e-15)


# ---------------------------------------------------------------- the objects


def test_encode_writes_the_fields_and_clears_the_others():
    hyper = abi.new_hyper()
    hyper[0]["lr"] = 0.25
    schedules.cosine(T_max=40, eta_min=0.003).encode(hyper[0])
    rec = hyper[0]
    assert (rec["schedule"], rec["t_max"], rec["eta_min"]) == (abi.SCHEDULE_COSINE, 40, 0.003)
    assert rec["lr"] == 0.25  # the optimiser's, untouched
    schedules.step(5, gamma=0.5).encode(hyper[0])  # written over: no cosine fields left behind
    assert (rec["schedule"], rec["step_size"], rec["gamma"], rec["t_max"], rec["eta_min"]) == (
        abi.SCHEDULE_STEP,
        5,
        0.5,
        0,
        0.0,
    )
    schedules.constant().encode(hyper[0])
    fields = ("step_size", "gamma", "t_max", "eta_min", "start_factor", "end_factor", "total_iters", "power_t")
    assert rec["schedule"] == abi.SCHEDULE_CONSTANT and all(rec[f] == 0 for f in fields)
    for s, code in [
        (schedules.exponential(0.9), abi.SCHEDULE_EXPONENTIAL),
        (schedules.linear(0.5, 0.25, 8), abi.SCHEDULE_LINEAR),
        (schedules.inverse_scaling(0.75), abi.SCHEDULE_INVERSE_SCALING),
    ]:
        s.encode(hyper[0])
        assert rec["schedule"] == code
    assert rec["power_t"] == 0.75 and rec["total_iters"] == 0 and rec["start_factor"] == 0.0
    assert rec["warmup_steps"] == 0 and rec["warmup_start_factor"] == 0.0  # no warm-up


def test_encode_writes_a_warmup_and_its_schedule():
    hyper = abi.new_hyper()
    hyper[0]["lr"] = 0.25
    rec = hyper[0]
    schedules.warmup(schedules.linear(0.5, 0.25, 8), 12, start_factor=0.3).encode(rec)
    assert (rec["schedule"], rec["start_factor"], rec["end_factor"], rec["total_iters"]) == (
        abi.SCHEDULE_LINEAR,
        0.5,
        0.25,
        8,
    )
    assert (rec["warmup_steps"], rec["warmup_start_factor"], rec["lr"]) == (12, 0.3, 0.25)
    schedules.warmup(schedules.constant(), 2).encode(rec)  # the linear's fields go
    assert (rec["schedule"], rec["start_factor"], rec["total_iters"]) == (abi.SCHEDULE_CONSTANT, 0.0, 0)
    assert (rec["warmup_steps"], rec["warmup_start_factor"]) == (2, 0.1)
    schedules.cosine(9).encode(rec)  # and a schedule without a warm-up clears it
    assert (rec["schedule"], rec["t_max"], rec["warmup_steps"], rec["warmup_start_factor"]) == (
        abi.SCHEDULE_COSINE,
        9,
        0,
        0.0,
    )


ALL = [
    schedules.constant(),
    schedules.step(3),
    schedules.exponential(0.9),
    schedules.cosine(100, eta_min=1e-4),
    schedules.linear(),
    schedules.inverse_scaling(0.5),
    schedules.warmup(schedules.cosine(100, eta_min=1e-4), 10),
    schedules.warmup(schedules.constant(), 3, start_factor=1.0),
    schedules.warmup(schedules.linear(0.25, 0.5, 7), 2, start_factor=0.75),
]


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_repr_is_the_call_that_makes_it(schedule):
    assert repr(schedule).startswith("fastlin.schedules.")
    assert eval(repr(schedule), {"fastlin": fastlin}) == schedule  # noqa: S307 (our own repr)


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_pickle_copy_and_equality(schedule):
    again = pickle.loads(pickle.dumps(schedule))
    assert again == schedule and hash(again) == hash(schedule) and again is not schedule
    assert copy.deepcopy(schedule) == schedule and copy.copy(schedule) == schedule
    assert schedule != schedules.step(4)
    assert schedule != "cosine"


def test_equality_is_by_kind_and_checked_values():
    assert schedules.cosine(10) == schedules.cosine(T_max=10, eta_min=0)
    assert schedules.cosine(10) != schedules.cosine(11)
    assert schedules.step(2, 0.5) != schedules.step(2, 0.25)
    assert schedules.exponential(0.5) != schedules.step(1, 0.5)  # the same rates, not the same schedule
    assert schedules.step(np.int64(3), np.float32(0.5)) == schedules.step(3, 0.5)
    assert len({schedules.cosine(10), schedules.cosine(10), schedules.linear()}) == 2
    assert isinstance(schedules.step(np.int64(3)).step_size, int)
    w = schedules.warmup(schedules.cosine(10), 5)
    assert w == schedules.warmup(schedules.cosine(T_max=10, eta_min=0.0), steps=np.int64(5), start_factor=0.1)
    assert w != schedules.warmup(schedules.cosine(10), 6)
    assert w != schedules.warmup(schedules.cosine(10), 5, start_factor=0.2)
    assert w != schedules.warmup(schedules.cosine(11), 5)
    assert w != schedules.cosine(10)
    # the same rates as linear(0.1, 1.0, 5), not the same schedule
    assert schedules.warmup(schedules.constant(), 5) != schedules.linear(0.1, 1.0, 5)
    assert len({w, schedules.warmup(schedules.cosine(10), 5), schedules.cosine(10)}) == 2
    assert isinstance(w.steps, int) and isinstance(w.start_factor, float)


def test_parameters_are_readable_and_immutable():
    s = schedules.linear(0.5, 0.9, 12)
    assert (s.kind, s.start_factor, s.end_factor, s.total_iters) == ("linear", 0.5, 0.9, 12)
    assert s.params == {"start_factor": 0.5, "end_factor": 0.9, "total_iters": 12}
    s.params["total_iters"] = 1  # a copy
    assert s.total_iters == 12
    with pytest.raises(AttributeError, match="immutable"):
        s.total_iters = 3
    with pytest.raises(AttributeError, match="immutable"):
        del s.kind
    with pytest.raises(AttributeError, match="no attribute 'T_max'"):
        _ = s.T_max
    w = schedules.warmup(s, 4, start_factor=0.5)
    assert (w.kind, w.schedule, w.steps, w.start_factor) == ("warmup", s, 4, 0.5)
    assert w.params == {"schedule": s, "steps": 4, "start_factor": 0.5}
    with pytest.raises(AttributeError, match="immutable"):
        w.steps = 5


def test_schedule_constructor_checks_as_the_factory_does():
    assert schedules.Schedule("cosine", T_max=5) == schedules.cosine(5)
    with pytest.raises(ValueError, match="T_max must be >= 1"):
        schedules.Schedule("cosine", T_max=0)
    with pytest.raises(ValueError, match="unknown schedule kind 'onecycle'"):
        schedules.Schedule("onecycle")
    assert schedules.Schedule("warmup", schedule=schedules.cosine(5), steps=3) == schedules.warmup(
        schedules.cosine(5), 3
    )
    with pytest.raises(ValueError, match="steps must be >= 1"):
        schedules.Schedule("warmup", schedule=schedules.cosine(5), steps=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        schedules.Schedule("step", step_size=2, T_max=3)


def test_a_tampered_pickle_is_checked_again():
    data = pickle.dumps(schedules.cosine(7)).replace(b"T_max", b"T_mix")
    with pytest.raises(TypeError, match="T_mix"):
        pickle.loads(data)
    # a warm-up's wrapped schedule is checked on the way back, and so is the warm-up
    data = pickle.dumps(schedules.warmup(schedules.cosine(7), 3)).replace(b"T_max", b"T_mix")
    with pytest.raises(TypeError, match="T_mix"):
        pickle.loads(data)
    data = pickle.dumps(schedules.warmup(schedules.cosine(7), 3)).replace(b"steps", b"stops")
    with pytest.raises(TypeError, match="stops"):
        pickle.loads(data)


def test_lr_at_checks_its_arguments():
    s = schedules.cosine(10)
    with pytest.raises(ValueError, match="step must be >= 0"):
        s.lr_at(0.1, -1)
    with pytest.raises(TypeError, match="step must be an integer"):
        s.lr_at(0.1, 1.0)
    with pytest.raises(ValueError, match="base_lr must be finite"):
        s.lr_at(math.nan, 1)
    assert s.lr_at(0.1, np.int64(10)) == 0.0


# (factory, kwargs, exception, message): every argument of every factory,
# each way it can be wrong, and the error names it.
BAD = [
    (schedules.step, {"step_size": 0}, ValueError, "step_size must be >= 1"),
    (schedules.step, {"step_size": -3}, ValueError, "step_size must be >= 1"),
    (schedules.step, {"step_size": 2.0}, TypeError, "step_size must be an integer"),
    (schedules.step, {"step_size": True}, TypeError, "step_size must be an integer"),
    (schedules.step, {"step_size": "3"}, TypeError, "step_size must be an integer"),
    (schedules.step, {"step_size": 3, "gamma": 0.0}, ValueError, "gamma must be > 0"),
    (schedules.step, {"step_size": 3, "gamma": -0.5}, ValueError, "gamma must be > 0"),
    (schedules.step, {"step_size": 3, "gamma": math.inf}, ValueError, "gamma must be finite"),
    (schedules.step, {"step_size": 3, "gamma": "0.1"}, TypeError, "gamma must be a real number"),
    (schedules.step, {"step_size": 3, "gamma": True}, TypeError, "gamma must be a real number"),
    (schedules.exponential, {"gamma": 0}, ValueError, "gamma must be > 0"),
    (schedules.exponential, {"gamma": math.nan}, ValueError, "gamma must be finite"),
    (schedules.exponential, {"gamma": None}, TypeError, "gamma must be a real number"),
    (schedules.exponential, {"gamma": 1j}, TypeError, "gamma must be a real number"),
    (schedules.cosine, {"T_max": 0}, ValueError, "T_max must be >= 1"),
    (schedules.cosine, {"T_max": 10.5}, TypeError, "T_max must be an integer"),
    (schedules.cosine, {"T_max": np.True_}, TypeError, "T_max must be an integer"),
    (schedules.cosine, {"T_max": 10, "eta_min": -1e-3}, ValueError, "eta_min must be >= 0"),
    (schedules.cosine, {"T_max": 10, "eta_min": math.inf}, ValueError, "eta_min must be finite"),
    (schedules.cosine, {"T_max": 10, "eta_min": "0"}, TypeError, "eta_min must be a real number"),
    (schedules.linear, {"start_factor": 0.0}, ValueError, r"start_factor must be in \(0, 1\]"),
    (schedules.linear, {"start_factor": 1.5}, ValueError, r"start_factor must be in \(0, 1\]"),
    (schedules.linear, {"start_factor": -0.1}, ValueError, r"start_factor must be in \(0, 1\]"),
    (schedules.linear, {"start_factor": math.nan}, ValueError, "start_factor must be finite"),
    (schedules.linear, {"start_factor": False}, TypeError, "start_factor must be a real number"),
    (schedules.linear, {"end_factor": -0.01}, ValueError, r"end_factor must be in \[0, 1\]"),
    (schedules.linear, {"end_factor": 1.01}, ValueError, r"end_factor must be in \[0, 1\]"),
    (schedules.linear, {"end_factor": [1.0]}, TypeError, "end_factor must be a real number"),
    (schedules.linear, {"total_iters": -1}, ValueError, "total_iters must be >= 0"),
    (schedules.linear, {"total_iters": 5.0}, TypeError, "total_iters must be an integer"),
    (schedules.linear, {"total_iters": True}, TypeError, "total_iters must be an integer"),
    (schedules.inverse_scaling, {"power_t": math.inf}, ValueError, "power_t must be finite"),
    (schedules.inverse_scaling, {"power_t": -math.inf}, ValueError, "power_t must be finite"),
    (schedules.inverse_scaling, {"power_t": "0.25"}, TypeError, "power_t must be a real number"),
    (schedules.inverse_scaling, {"power_t": True}, TypeError, "power_t must be a real number"),
    (schedules.warmup, {"schedule": None, "steps": 5}, TypeError, "schedule must be a fastlin.schedules.Schedule"),
    (schedules.warmup, {"schedule": "cosine", "steps": 5}, TypeError, "schedule must be a fastlin.schedules"),
    (
        schedules.warmup,
        {"schedule": schedules.warmup(schedules.cosine(9), 2), "steps": 5},
        ValueError,
        "schedule is already a warmup",
    ),
    (schedules.warmup, {"schedule": schedules.cosine(9), "steps": 0}, ValueError, "steps must be >= 1"),
    (schedules.warmup, {"schedule": schedules.cosine(9), "steps": -2}, ValueError, "steps must be >= 1"),
    (schedules.warmup, {"schedule": schedules.cosine(9), "steps": 5.0}, TypeError, "steps must be an integer"),
    (schedules.warmup, {"schedule": schedules.cosine(9), "steps": True}, TypeError, "steps must be an integer"),
    (schedules.warmup, {"schedule": schedules.cosine(9), "steps": None}, TypeError, "steps must be an integer"),
    (
        schedules.warmup,
        {"schedule": schedules.cosine(9), "steps": 5, "start_factor": 0.0},
        ValueError,
        r"start_factor must be in \(0, 1\]",
    ),
    (
        schedules.warmup,
        {"schedule": schedules.cosine(9), "steps": 5, "start_factor": 1.01},
        ValueError,
        r"start_factor must be in \(0, 1\]",
    ),
    (
        schedules.warmup,
        {"schedule": schedules.cosine(9), "steps": 5, "start_factor": math.inf},
        ValueError,
        "start_factor must be finite",
    ),
    (
        schedules.warmup,
        {"schedule": schedules.cosine(9), "steps": 5, "start_factor": "0.1"},
        TypeError,
        "start_factor must be a real number",
    ),
]


@pytest.mark.parametrize("factory, kwargs, exc, message", BAD, ids=[f"{f.__name__}-{k}" for f, k, _, _ in BAD])
def test_factories_refuse_bad_arguments(factory, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        factory(**kwargs)


def test_factories_accept_the_edges_torch_accepts():
    assert schedules.linear(start_factor=1.0, end_factor=0.0, total_iters=0).total_iters == 0
    assert schedules.step(1, gamma=1e-300).gamma == 1e-300
    assert schedules.cosine(1, eta_min=0.0).T_max == 1
    assert schedules.exponential(5).gamma == 5.0 and isinstance(schedules.exponential(5).gamma, float)
    assert schedules.inverse_scaling(-2).power_t == -2.0
    assert schedules.step(2**40).step_size == 2**40
    assert schedules.warmup(schedules.constant(), 1, start_factor=1.0).steps == 1
    assert schedules.warmup(schedules.cosine(3), 2**40, start_factor=1e-300).start_factor == 1e-300
    with pytest.raises(TypeError):
        schedules.constant(1)  # takes nothing
