"""Learning-rate schedules, evaluated inside fastlin's compiled training loops.

Pass one to an optimiser::

    opt = fastlin.SGD(lr=0.1, momentum=0.9, schedule=fastlin.schedules.cosine(T_max=100))

A schedule is counted in optimiser steps: the step with 0-based index ``k``
of a model uses the rate that torch's scheduler gives after ``k`` calls of
``scheduler.step()``, when ``scheduler.step()`` follows every
``optimizer.step()``.  The position is part of the optimiser's state for
each model, so ``step``, ``fit`` and further ``fit`` calls continue it.

=================================  ============================================
``step(step_size, gamma=0.1)``     ``torch.optim.lr_scheduler.StepLR``
``exponential(gamma)``             ``torch.optim.lr_scheduler.ExponentialLR``
``cosine(T_max, eta_min=0.0)``     ``torch.optim.lr_scheduler.CosineAnnealingLR``
``linear(start_factor=1/3, ...)``  ``torch.optim.lr_scheduler.LinearLR``
``inverse_scaling(power_t=0.25)``  scikit-learn's ``learning_rate="invscaling"``
``constant()``                     no scheduler (the default)
``warmup(schedule, steps, ...)``   ``SequentialLR`` of a ``LinearLR`` and ``schedule``
=================================  ============================================

``warmup`` puts a linear warm-up in front of any other schedule::

    fastlin.schedules.warmup(fastlin.schedules.cosine(T_max=1000), steps=100)

ramps the rate from ``0.1 * lr`` over 100 steps, then anneals it from ``lr``
along the cosine: the cosine's position counts from the end of the warm-up,
so it starts at its peak.

Schedules are small immutable values: they compare equal when their kind and
parameters are equal, hash, pickle, and print as the call that makes them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import _validate
from .backends import abi, rules

__all__ = ["Schedule", "constant", "cosine", "exponential", "inverse_scaling", "linear", "step", "warmup"]

# Every HYPER field a schedule may write; encode() zeroes the ones a kind
# does not use, so that re-encoding another schedule leaves nothing behind
# (a schedule without a warm-up writes warmup_steps = 0: none).
_HYPER_FIELDS = (
    "step_size",
    "gamma",
    "t_max",
    "eta_min",
    "start_factor",
    "end_factor",
    "total_iters",
    "power_t",
    "warmup_steps",
    "warmup_start_factor",
)

# kind -> (abi code, {parameter name: HYPER field})
_KINDS = {
    "constant": (abi.SCHEDULE_CONSTANT, {}),
    "step": (abi.SCHEDULE_STEP, {"step_size": "step_size", "gamma": "gamma"}),
    "exponential": (abi.SCHEDULE_EXPONENTIAL, {"gamma": "gamma"}),
    "cosine": (abi.SCHEDULE_COSINE, {"T_max": "t_max", "eta_min": "eta_min"}),
    "linear": (
        abi.SCHEDULE_LINEAR,
        {"start_factor": "start_factor", "end_factor": "end_factor", "total_iters": "total_iters"},
    ),
    "inverse_scaling": (abi.SCHEDULE_INVERSE_SCALING, {"power_t": "power_t"}),
}
# warmup has no code of its own: it writes the wrapped schedule's fields and
# the two warm-up fields (Schedule._new).


class Schedule:
    """A learning-rate schedule: a kind and its checked parameters.

    Made by the factories of :mod:`fastlin.schedules` (``cosine(T_max=100)``
    and so on); ``Schedule("cosine", T_max=100)`` is the same call, checked
    by the same factory.  Read-only: ``kind`` (the factory's name),
    ``params`` (a dict copy), and each parameter as an attribute
    (``schedule.T_max``).
    """

    __slots__ = ("_fields", "_kind", "_params")
    _kind: str
    _params: tuple[tuple[str, Any], ...]
    _fields: dict[str, int | float]  # what encode() writes, as Python numbers

    def __init__(self, kind: str, **params: Any) -> None:
        factory = _FACTORIES.get(kind) if isinstance(kind, str) else None
        if factory is None:
            raise ValueError(f"unknown schedule kind {kind!r}; expected one of {', '.join(_FACTORIES)}")
        checked = factory(**params)
        object.__setattr__(self, "_kind", checked._kind)
        object.__setattr__(self, "_params", checked._params)
        object.__setattr__(self, "_fields", checked._fields)

    @classmethod
    def _new(cls, kind: str, params: tuple[tuple[str, Any], ...]) -> Schedule:
        """The factories' constructor: ``params`` are already checked, as (name, value) pairs."""
        self = object.__new__(cls)
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_params", tuple(params))
        fields: dict[str, int | float]
        if kind == "warmup":
            # The wrapped schedule's fields (its own warm-up fields are zero:
            # it is not a warm-up), with this warm-up's written over them.
            named = dict(params)
            fields = dict(named["schedule"]._fields)
            fields["warmup_steps"] = named["steps"]
            fields["warmup_start_factor"] = named["start_factor"]
        else:
            code, names = _KINDS[kind]
            fields = {"schedule": code}
            for field in _HYPER_FIELDS:  # zero, of the field's type
                fields[field] = 0 if abi.HYPER[field].kind == "i" else 0.0
            for name, value in params:
                fields[names[name]] = value
        object.__setattr__(self, "_fields", fields)
        return self

    @property
    def kind(self) -> str:
        """The factory's name: ``"cosine"``, ``"step"``, ..."""
        return self._kind

    @property
    def params(self) -> dict[str, Any]:
        """The parameters, by the factory's argument names (a new dict)."""
        return dict(self._params)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: expose the parameters.
        for key, value in object.__getattribute__(self, "_params"):
            if key == name:
                return value
        raise AttributeError(f"{type(self).__name__!s} {self._kind!r} has no attribute {name!r}")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Schedule is immutable; make a new one with the fastlin.schedules factory")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("a Schedule is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return self._kind == other._kind and self._params == other._params

    def __hash__(self) -> int:
        return hash((self._kind, self._params))

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={value!r}" for name, value in self._params)
        return f"fastlin.schedules.{self._kind}({args})"

    def __reduce__(self) -> tuple[Any, tuple[str, tuple[tuple[str, Any], ...]]]:
        # Rebuilt through the factory, so an unpickled schedule is checked again.
        return (_rebuild, (self._kind, self._params))

    def __copy__(self) -> Schedule:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Schedule:
        return self

    def encode(self, record: np.void) -> None:
        """Write this schedule into ``record``, one record of ``abi.HYPER``.

        Sets ``record["schedule"]`` to the kind's code and the kind's fields
        to its parameters, and zeroes the schedule fields it does not use.
        ``record["lr"]`` (the base rate) is the optimiser's, and untouched.
        """
        for field, value in self._fields.items():
            record[field] = value

    def lr_at(self, base_lr: float, step: int) -> float:
        """The learning rate of the 0-based optimiser step ``step``, from ``base_lr``.

        Plain Python (for ``History.lr`` and tests), computing exactly what
        the kernels compute: it runs :func:`fastlin.backends.rules.scheduled_lr`
        itself, with the fields :meth:`encode` writes, in Python floats (a few
        microseconds).  Where Python's floats raise instead of giving IEEE's
        Inf (``2.0 ** 5000``, ``1 / 0.0``) it runs again on a HYPER record,
        in numpy scalars, which give the compiled code's Inf.
        """
        base_lr = _validate.check_real(base_lr, "base_lr", minimum=0.0)
        step = _validate.check_int(step, "step", minimum=0)
        fields = dict(self._fields, lr=base_lr)
        try:
            return float(rules.scheduled_lr(fields, step))
        except (OverflowError, ZeroDivisionError):
            hyper = abi.new_hyper()
            hyper[0]["lr"] = base_lr
            self.encode(hyper[0])
            with np.errstate(all="ignore"):
                return float(rules.scheduled_lr(hyper[0], np.int64(step)))


def _rebuild(kind: str, params: tuple[tuple[str, Any], ...]) -> Schedule:
    return Schedule(kind, **dict(params))


def _check_factor(value: float, name: str, *, low_open: bool) -> float:
    """A finite real in (0, 1] (``low_open``) or [0, 1], as LinearLR checks its factors."""
    value = _validate.check_real(value, name)
    if (value <= 0.0 if low_open else value < 0.0) or value > 1.0:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def step(step_size: int, gamma: float = 0.1) -> Schedule:
    """Multiply the rate by ``gamma`` every ``step_size`` steps.

    ``lr_k = lr * gamma ** (k // step_size)``: torch's ``StepLR``.

    Parameters
    ----------
    step_size : int >= 1
        Steps between two decays.
    gamma : float > 0
        The factor.
    """
    step_size = _validate.check_int(step_size, "step_size", minimum=1)
    gamma = _validate.check_real(gamma, "gamma", minimum=0.0, strict=True)
    return Schedule._new("step", (("step_size", step_size), ("gamma", gamma)))


def exponential(gamma: float) -> Schedule:
    """Multiply the rate by ``gamma`` every step.

    ``lr_k = lr * gamma ** k``: torch's ``ExponentialLR``.

    Parameters
    ----------
    gamma : float > 0
        The factor per step (above 1 the rate grows).
    """
    gamma = _validate.check_real(gamma, "gamma", minimum=0.0, strict=True)
    return Schedule._new("exponential", (("gamma", gamma),))


def cosine(T_max: int, eta_min: float = 0.0) -> Schedule:  # noqa: N803 (torch's name)
    """Anneal the rate from ``lr`` to ``eta_min`` along half a cosine over ``T_max`` steps.

    ``lr_k = eta_min + (lr - eta_min) * (1 + cos(pi * k / T_max)) / 2``:
    torch's ``CosineAnnealingLR`` (without restarts).  Past ``T_max`` the rate
    climbs back, with period ``2 * T_max``, as torch's does.

    Parameters
    ----------
    T_max : int >= 1
        Steps from ``lr`` down to ``eta_min``.
    eta_min : float >= 0
        The lowest rate.
    """
    T_max = _validate.check_int(T_max, "T_max", minimum=1)  # noqa: N806
    eta_min = _validate.check_real(eta_min, "eta_min", minimum=0.0)
    return Schedule._new("cosine", (("T_max", T_max), ("eta_min", eta_min)))


def linear(start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5) -> Schedule:
    """Scale the rate by a factor that moves linearly from ``start_factor`` to ``end_factor``.

    ``lr_k = lr * (start + (end - start) * min(k, total_iters) / total_iters)``:
    torch's ``LinearLR`` (a warm-up with the defaults).  With
    ``total_iters=0`` the rate stays ``lr * start_factor``, as torch's does.

    Parameters
    ----------
    start_factor : float in (0, 1]
        The factor of the first step.
    end_factor : float in [0, 1]
        The factor from step ``total_iters`` on.
    total_iters : int >= 0
        Steps from the first factor to the last.
    """
    start_factor = _check_factor(start_factor, "start_factor", low_open=True)
    end_factor = _check_factor(end_factor, "end_factor", low_open=False)
    total_iters = _validate.check_int(total_iters, "total_iters", minimum=0)
    return Schedule._new(
        "linear", (("start_factor", start_factor), ("end_factor", end_factor), ("total_iters", total_iters))
    )


def inverse_scaling(power_t: float = 0.25) -> Schedule:
    """Divide the rate by ``(k + 1) ** power_t`` at step ``k``.

    scikit-learn's ``learning_rate="invscaling"`` (``eta0 / t ** power_t``),
    counted in optimiser steps.

    Parameters
    ----------
    power_t : float
        The exponent (finite; scikit-learn accepts any real).
    """
    power_t = _validate.check_real(power_t, "power_t")
    return Schedule._new("inverse_scaling", (("power_t", power_t),))


def constant() -> Schedule:
    """Keep the rate at ``lr``: the same as passing no schedule."""
    return Schedule._new("constant", ())


def warmup(schedule: Schedule, steps: int, start_factor: float = 0.1) -> Schedule:
    """A linear warm-up of ``steps`` steps in front of ``schedule``.

    Step ``k < steps`` uses ``lr * (start_factor + (1 - start_factor) * k / steps)``;
    step ``k >= steps`` uses ``schedule``'s rate at ``k - steps``, so the
    schedule begins at its own first step (a cosine at its peak ``lr``) when
    the warm-up ends.  In torch::

        SequentialLR(opt, [LinearLR(opt, start_factor, 1.0, total_iters=steps), S], milestones=[steps])

    where ``S`` is ``schedule``'s scheduler (torch's SequentialLR restarts
    ``S`` at position 0 at the milestone).  ``warmup(constant(), n, f)`` is
    ``LinearLR(opt, f, 1.0, n)`` alone.  One difference: after a warm-up,
    ``linear(total_iters=0)`` keeps ``lr * start_factor`` as it does alone,
    where torch's SequentialLR raises ZeroDivisionError at the milestone
    (torch 2.13 restarts the LinearLR with its closed form, which divides by
    ``total_iters``).

    Parameters
    ----------
    schedule : Schedule
        The schedule after the warm-up; any but another warm-up (see below).
    steps : int >= 1
        Steps of warm-up (torch's milestone).
    start_factor : float in (0, 1]
        The first step's fraction of ``lr``, as in torch's ``LinearLR``.

    A warm-up of a warm-up is refused: the kernels' record has room for one
    warm-up, and two ramps in a row are not one ramp, so they cannot be
    folded into it.  Use one warm-up, or a ``linear`` schedule inside it.
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a fastlin.schedules.Schedule, got {type(schedule).__name__}")
    if schedule.kind == "warmup":
        raise ValueError(
            "schedule is already a warmup; a warm-up of a warm-up is not supported "
            "(fastlin's kernels hold one warm-up per optimiser): use a single warmup"
        )
    steps = _validate.check_int(steps, "steps", minimum=1)
    start_factor = _check_factor(start_factor, "start_factor", low_open=True)
    return Schedule._new("warmup", (("schedule", schedule), ("steps", steps), ("start_factor", start_factor)))


_FACTORIES: dict[str, Callable[..., Schedule]] = {
    "constant": constant,
    "step": step,
    "exponential": exponential,
    "cosine": cosine,
    "linear": linear,
    "inverse_scaling": inverse_scaling,
    "warmup": warmup,
}
