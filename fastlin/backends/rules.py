"""The scalar maths of every optimiser and learning-rate schedule, written once.

Both backends compile these functions themselves: ``cpu.py`` with
``njit(inline="always")`` and ``cuda.py`` with ``cuda.jit(device=True)``, and
the CUDA simulator runs them as they are.  That is why this module imports
neither numba nor numba-cuda, and why the functions keep to what all three
accept: ``math``, arithmetic, comparisons and tuples, no numpy calls, no
allocation, no exceptions, no helper functions (a plain Python helper would
not be compiled with them), and no globals but abi's integer codes, which the
compilers freeze as constants.

``hp`` is one record of :data:`fastlin.backends.abi.HYPER` (``hyper[0]``).
Fields are read as ``hp["lr"]``, not ``hp.lr``: numba's records, the
simulator's records, numpy's ``np.void`` and a plain ``dict`` all accept the
subscript, so :meth:`fastlin.schedules.Schedule.lr_at` can run the very same
code in plain Python.

Everything is float64 arithmetic: the kernels pass parameters, gradients and
slots in as float64 (a float32 model's values are widened) and narrow the
results when they store them, after checking that they are finite.
"""

import math

from .abi import (
    RULE_ADAM,
    RULE_SGD,
    SCHEDULE_CONSTANT,
    SCHEDULE_COSINE,
    SCHEDULE_EXPONENTIAL,
    SCHEDULE_INVERSE_SCALING,
    SCHEDULE_LINEAR,
    SCHEDULE_STEP,
)


def scheduled_lr(hp, step):
    """The learning rate of the optimiser step with 0-based index ``step``.

    Equals torch's ``optimizer.param_groups[0]["lr"]`` after ``step`` calls of
    ``scheduler.step()`` (one after every ``optimizer.step()``), for the base
    rate ``hp["lr"]``:

    - ``SCHEDULE_CONSTANT``: ``lr``.
    - ``SCHEDULE_STEP``: ``lr * gamma ** (step // step_size)`` (``StepLR``).
    - ``SCHEDULE_EXPONENTIAL``: ``lr * gamma ** step`` (``ExponentialLR``).
    - ``SCHEDULE_COSINE``: ``eta_min + (lr - eta_min) * (1 + cos(pi * step / t_max)) / 2``
      (``CosineAnnealingLR``; past ``t_max`` it rises again, with period
      ``2 * t_max``, as torch's recurrence does).
    - ``SCHEDULE_LINEAR``: ``lr * (start + (end - start) * min(step, total_iters) / total_iters)``
      (``LinearLR``; ``lr * start`` forever when ``total_iters == 0``, as torch's does).
    - ``SCHEDULE_INVERSE_SCALING``: ``lr / (step + 1) ** power_t`` (scikit-learn's ``invscaling``).

    A warm-up (``warmup_steps`` = n > 0, ``warmup_start_factor`` = s) comes
    before any of them: steps ``k < n`` use ``lr * (s + (1 - s) * k / n)``,
    and step ``k >= n`` uses the schedule above at position ``k - n``.  That
    is torch's ``SequentialLR([LinearLR(s, 1.0, n), S], milestones=[n])``,
    which restarts ``S`` at position 0 at the milestone, so a cosine after a
    warm-up starts at its peak ``lr``.

    Closed forms rather than torch's recurrences, so a kernel can evaluate any
    step directly.  They agree with torch to 1e-11 relative or better over
    4000 steps (torch's own recurrences drift by that much; see
    tests/test_schedules.py).  Powers take a float exponent so that the CPU,
    CUDA and plain Python all call ``pow`` (numba would otherwise
    square-and-multiply an integer exponent, with different rounding).

    An unknown ``schedule`` code gives NaN, so that a step using it refuses to
    write rather than train with a made-up rate (fastlin.schedules never
    writes one).
    """
    kind = hp["schedule"]
    base = hp["lr"]
    warmup = hp["warmup_steps"]
    if step < warmup:
        if kind < SCHEDULE_CONSTANT or kind > SCHEDULE_INVERSE_SCALING:
            # An unknown code gives NaN during the warm-up too, not a rate
            # that looks right for a while (abi's codes are 0 .. 5, in a row;
            # tests/test_schedules.py checks that).
            return math.nan
        # LinearLR's closed form, from warmup_start_factor to 1 (the form
        # SCHEDULE_LINEAR uses, within 1e-15 of torch's recurrence).
        start = hp["warmup_start_factor"]
        return base * (start + (1.0 - start) * step / warmup)
    # After the warm-up the schedule starts again from its own position 0.
    step = step - warmup
    if kind == SCHEDULE_CONSTANT:
        return base * 1.0
    if kind == SCHEDULE_STEP:
        return base * hp["gamma"] ** ((step // hp["step_size"]) * 1.0)
    if kind == SCHEDULE_EXPONENTIAL:
        return base * hp["gamma"] ** (step * 1.0)
    if kind == SCHEDULE_COSINE:
        t_max = hp["t_max"]
        eta_min = hp["eta_min"]
        # The curve has period 2 * t_max; reducing the step first keeps the
        # argument small.  (1 + cos(pi x / T)) / 2 = sin(pi (T - x) / (2 T))^2
        # measures from the minimum, with the exact integer T - x: no
        # cancellation where the rate is smallest (and a relative error
        # largest), and exactly eta_min at the minimum, as torch's recurrence
        # gives there (its 1 + cos(pi) is 0).
        phase = step % (2 * t_max)
        half = math.sin(math.pi * (t_max - phase) / (2.0 * t_max))
        return eta_min + (base - eta_min) * (half * half)
    if kind == SCHEDULE_LINEAR:
        total = hp["total_iters"]
        start = hp["start_factor"]
        if total == 0:
            # torch's recurrence applies start_factor at construction and
            # never changes the rate again (its closed form would divide by 0).
            return base * start
        done = step if step < total else total
        return base * (start + (hp["end_factor"] - start) * done / total)
    if kind == SCHEDULE_INVERSE_SCALING:
        return base / (step + 1.0) ** hp["power_t"]
    return math.nan


def update_element(hp, lr, step, has_buf, p, g, s0, s1, s2):
    """One parameter's optimiser update, in float64.

    Parameters
    ----------
    hp : HYPER record
        ``rule`` picks the update; the rule's fields are read from it.
    lr : float
        The learning rate of this step (:func:`scheduled_lr`).
    step : int
        Optimiser steps taken before this one (Adam's ``t`` is ``step + 1``).
    has_buf : bool
        SGD: the momentum buffer ``s0`` holds a value (torch's ``buf is not
        None``); on the first step the buffer becomes the gradient itself.
    p, g : float
        The parameter and its (already reduced) gradient.
    s0, s1, s2 : float
        The parameter's optimiser slots: SGD's momentum buffer in ``s0``;
        Adam's ``exp_avg``, ``exp_avg_sq`` and (amsgrad) ``max_exp_avg_sq``.

    Returns
    -------
    (p_new, s0_new, s1_new, s2_new)
        Slots the rule does not use come back unchanged, and so does ``s0``
        for SGD without momentum.  An unknown rule gives a NaN parameter, so
        the step refuses to write.

    The arithmetic follows torch's single-tensor ``SGD`` and ``Adam`` /
    ``AdamW`` step by step (same operations, same order), which keeps float64
    results within about 1e-15 relative of torch's per step.
    """
    rule = hp["rule"]
    weight_decay = hp["weight_decay"]
    if rule == RULE_SGD:
        if weight_decay != 0.0:
            g = g + weight_decay * p
        momentum = hp["momentum"]
        if momentum != 0.0:
            if has_buf:
                s0 = s0 * momentum + (1.0 - hp["dampening"]) * g
            else:
                s0 = g * 1.0
            if hp["nesterov"]:
                g = g + momentum * s0
            else:
                g = s0
        return p - lr * g, s0, s1, s2
    if rule == RULE_ADAM:
        if weight_decay != 0.0:
            if hp["decoupled"]:
                p = p * (1.0 - lr * weight_decay)  # AdamW: decay the weight itself
            else:
                g = g + weight_decay * p  # Adam: L2, through the gradient
        beta1 = hp["beta1"]
        beta2 = hp["beta2"]
        # exp_avg.lerp_(grad, 1 - beta1), with torch's two forms of lerp
        # (the one whose rounding is better for the weight's size).
        weight = 1.0 - beta1
        if weight < 0.5:
            s0 = s0 + weight * (g - s0)
        else:
            s0 = g - (g - s0) * (1.0 - weight)
        s1 = s1 * beta2 + (1.0 - beta2) * g * g
        t = step + 1.0
        bias_correction1 = 1.0 - beta1**t
        bias_correction2 = 1.0 - beta2**t
        step_size = lr / bias_correction1
        second = s1
        if hp["amsgrad"]:
            # torch.maximum: the running maximum, NaN if either is NaN
            if s1 > s2 or s1 != s1:
                s2 = s1 * 1.0
            second = s2
        denom = math.sqrt(second) / math.sqrt(bias_correction2) + hp["eps"]
        return p + (-step_size) * (s0 / denom), s0, s1, s2
    return math.nan, s0, s1, s2


def slot_count(rule, momentum, amsgrad):
    """k, the number of per-parameter slots (``slots_w`` is (k, out, in)).

    SGD: 1 with momentum (the buffer), else 0.  Adam/AdamW: 2 (the two
    moments), 3 with amsgrad (their running maximum).  Host-side only.
    """
    if rule == RULE_SGD:
        return 1 if momentum != 0 else 0
    if rule == RULE_ADAM:
        return 3 if amsgrad else 2
    raise ValueError(f"unknown optimiser rule code {rule!r}")
