"""Optimisers: ``SGD``, ``Adam`` and ``AdamW``, with ``torch.optim``'s semantics.

An optimiser is its hyper-parameters, a learning-rate schedule, and a state
per model it has stepped.  It never touches a model's weights: it hands the
backends two things, and their kernels do the update (check, then write).

``hyper()``
    A one-element array of :data:`fastlin.backends.abi.HYPER`: the update
    rule and its numbers, by field name.  Cached; a new array is made after
    any change of a hyper-parameter, so one handed out never changes.
``state_for(model, ops)``
    The model's :class:`OptimizerState` on its device: ``slots_w`` (k, out,
    in) and ``slots_b`` (k, out), the rule's per-parameter buffers, and the
    int64 ``counters`` (steps taken, a fit's epoch and position).

The update of one parameter is written once, in
:mod:`fastlin.backends.rules`, and compiled for every backend.  This module
imports nothing from the layer: ``apply`` asks the model to run the update.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np

from . import _validate
from ._typing import ArrayLike, Linear
from .backends import abi
from .schedules import Schedule, constant

PICKLE_FORMAT = 2  # 1: SGD only, (weight, bias, flags) per model; still read


class OptimizerState:
    """One model's state in one optimiser, on that model's device.

    ``slots_w`` (k, out, in) and ``slots_b`` (k, out) hold the update rule's
    buffers in the model's dtype (SGD: the momentum buffer, k = 1, or k = 0
    without momentum; Adam: the two moment estimates, and the running maximum
    with amsgrad).  ``counters`` is the host int64 vector indexed by
    ``abi.CNT_*`` that the kernels read and write.
    """

    __slots__ = ("device", "slots_w", "slots_b", "counters")

    def __init__(self, ops, n_out, n_in, dtype, k):
        self.device = ops.name
        self.slots_w = ops.zeros((k, n_out, n_in), dtype)
        self.slots_b = ops.zeros((k, n_out), dtype)
        self.counters = np.zeros(abi.CNT_SIZE, dtype=np.int64)  # host memory on every device

    @property
    def n_slots(self):
        return self.slots_w.shape[0]

    def arrays(self):
        """The device arrays of the state (what a snapshot must save)."""
        return (self.slots_w, self.slots_b)


class Optimizer:
    """What every fastlin optimiser shares: per-model state, the cached
    hyper-parameter record, the schedule, validation on assignment, pickling.

    Subclasses set ``_NAMES`` (their hyper-parameters, in ``__init__``
    order), ``_RULE`` (an ``abi.RULE_*``) and implement ``_check`` (validate
    every value together) and ``_encode`` (write them into a HYPER record).
    """

    _NAMES: tuple[str, ...] = ()
    _RULE = abi.RULE_SGD
    # Set through object.__setattr__ (by _set_all and _init_caches), declared for type checkers.
    lr: float
    schedule: Schedule | None
    _states: weakref.WeakKeyDictionary[Any, OptimizerState]
    _hyper: tuple[int, np.ndarray] | None
    _generation: int
    _lock: threading.Lock
    _resets: int
    _last: tuple[Any, Any, int, int]

    def _set_all(self, values):
        for key, value in zip(self._NAMES, self._check(**values)):
            object.__setattr__(self, key, value)

    def _init_caches(self):
        """The lock and caches (never pickled: rebuilt here)."""
        object.__setattr__(self, "_states", weakref.WeakKeyDictionary())
        object.__setattr__(self, "_hyper", None)
        # Bumped after every change of a hyper-parameter: a record cached
        # under an older generation is stale (even one a concurrent hyper()
        # call stored after the change).
        object.__setattr__(self, "_generation", 0)
        object.__setattr__(self, "_lock", threading.Lock())  # guards creating and dropping states
        object.__setattr__(self, "_resets", 0)  # bumped by reset(): a remembered state may be gone
        # The state handed out last, with what it was valid for: a step loop
        # asks for the same model's state again and again, and a weak-keyed
        # lookup costs ~5% of a small step.
        object.__setattr__(self, "_last", (_dead_ref, None, -1, -1))

    def _values(self):
        return {key: getattr(self, key) for key in self._NAMES}

    def __setattr__(self, name, value):
        # A hyper-parameter changed later (by a callback, say) is validated
        # like one given to __init__, and the cached record dropped.
        if name in self._NAMES:
            values = self._values()
            values[name] = value
            checked = self._check(**values)
            object.__setattr__(self, name, checked[self._NAMES.index(name)])
            object.__setattr__(self, "_generation", self._generation + 1)
            return
        object.__setattr__(self, name, value)

    def __repr__(self):
        shown = [key for key in self._NAMES if key != "schedule" or self.schedule is not None]
        args = ", ".join(f"{key}={getattr(self, key)!r}" for key in shown)
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------
    # what the backends read
    # ------------------------------------------------------------------
    def hyper(self):
        """The one-element ``abi.HYPER`` array the kernels read (cached).

        Internal: used by fastlin's training loop and backends.  An array
        once returned is never changed: after ``opt.lr = ...`` the next call
        returns a new one, so a fit asks again after user code has run.
        """
        generation = self._generation  # read before the values (see _init_caches)
        got = self._hyper
        if got is None or got[0] != generation:
            record = abi.new_hyper()
            record["rule"] = self._RULE
            self._encode(record[0])
            (self.schedule or _CONSTANT).encode(record[0])
            got = (generation, record)
            object.__setattr__(self, "_hyper", got)
        return got[1]

    def lr_at(self, step: int) -> float:
        """The learning rate of this optimiser's step ``step`` (0-based, per model)."""
        return (self.schedule or _CONSTANT).lr_at(self.lr, step)

    def _n_slots(self):
        raise NotImplementedError

    def state_for(self, model, ops):
        """The state of ``model`` (created, grown or moved to its device).

        Internal: used by fastlin's training loop and backends.
        """
        ref, st, generation, resets = self._last
        if ref() is model and generation == self._generation and resets == self._resets and st.device == ops.name:
            return st  # the common case: the same model as last time, nothing changed
        generation, resets = self._generation, self._resets  # read before the state
        k = self._n_slots()
        st = self._states.get(model)
        if st is None or st.device != ops.name or st.n_slots < k:
            with self._lock:  # models stepped from several threads share this dict
                st = self._states.get(model)
                if st is None:
                    st = OptimizerState(ops, model.out_features, model.in_features, model.dtype, k)
                    self._states[model] = st
                elif st.device != ops.name:
                    st.slots_w = ops.from_host(_host(st.slots_w))
                    st.slots_b = ops.from_host(_host(st.slots_b))
                    st.device = ops.name
                if st.n_slots < k:
                    # A rule that needs more buffers than the state holds
                    # (momentum set after steps without it): the new ones
                    # start empty, as torch's "buf is None"; the step count
                    # and the schedule's position carry on.
                    fresh = OptimizerState(ops, model.out_features, model.in_features, model.dtype, k)
                    n = st.n_slots
                    if n:
                        ops.copy_into(fresh.slots_w[:n], st.slots_w)
                        ops.copy_into(fresh.slots_b[:n], st.slots_b)
                    st.slots_w, st.slots_b = fresh.slots_w, fresh.slots_b
                    st.counters[abi.CNT_HAS_BUF] = 0
        object.__setattr__(self, "_last", (weakref.ref(model), st, generation, resets))
        return st

    # ------------------------------------------------------------------
    # public
    # ------------------------------------------------------------------
    def reset(self, model: Linear | None = None) -> None:
        """Forget the state (buffers, step count, schedule position) of
        ``model``, or of every model."""
        with self._lock:
            object.__setattr__(self, "_resets", self._resets + 1)
            if model is None:
                self._states.clear()
            else:
                self._states.pop(model, None)

    def apply(self, model: Linear, weight_grad: ArrayLike, bias_grad: ArrayLike | None = None) -> None:
        """Update ``model`` in place from gradients computed elsewhere.

        For layers trained through :meth:`fastlin.Linear.backward` (a layer
        inside a larger model) or gradients summed across machines.  Counts
        as one step of the schedule.

        Parameters
        ----------
        model : Linear
        weight_grad : array-like, shape (out_features, in_features)
            dL/dW, already reduced (any real dtype; used in float64).
        bias_grad : array-like, shape (out_features,)
            dL/db; required for a layer with a bias, refused without one.

        Raises
        ------
        ValueError
            A gradient has the wrong shape or holds NaN/Inf.
        DivergenceError
            The update would make a weight NaN/Inf.

        In both cases nothing changes.
        """
        update = getattr(model, "_apply_gradients", None)
        if update is None:
            raise TypeError(f"model must be a fastlin.Linear, got {type(model).__name__}")
        update(self, weight_grad, bias_grad)

    # ------------------------------------------------------------------
    # pickle and copy
    # ------------------------------------------------------------------
    def __getstate__(self):
        """Plain data: the hyper-parameters and, for each model this
        optimiser has stepped, that model and host copies of its state.

        The models are pickled by reference, so ``pickle.dumps((model, opt))``
        and ``copy.deepcopy((model, opt))`` give an optimiser whose state
        belongs to the copied model.  An optimiser pickled without its models
        carries copies of them that nothing else holds: on loading they go
        at once, and their state with them (the state is kept weakly).
        """
        with self._lock:  # only to list the states; each is read under its model's lock
            items = list(self._states.items())
        states = []
        for model, st in items:
            with model._lock:  # not halfway through a step of that model
                saved = {"slots_w": _host(st.slots_w), "slots_b": _host(st.slots_b), "counters": st.counters.copy()}
            states.append((model, saved))
        return {"format": PICKLE_FORMAT, "hyper": self._values(), "states": states}

    def __setstate__(self, state):
        if not isinstance(state, dict) or state.get("format") not in (1, PICKLE_FORMAT):
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"cannot restore a fastlin.{type(self).__name__} from this pickle "
                f"(format {got!r}; this fastlin reads 1 and {PICKLE_FORMAT})"
            )
        values = dict(state["hyper"])
        values.setdefault("schedule", None)  # format 1 had no schedule
        self._set_all(values)
        self._init_caches()
        for model, saved in state["states"]:
            ops = model._ops  # the model is restored before the optimiser that refers to it
            if state["format"] == 1:  # SGD's momentum buffer and the 3-entry flags of fastlin 0.1
                saved = _from_format_1(saved)
            st = OptimizerState.__new__(OptimizerState)
            st.device = ops.name
            st.slots_w = ops.from_host(np.asarray(saved["slots_w"]))
            st.slots_b = ops.from_host(np.asarray(saved["slots_b"]))
            st.counters = np.zeros(abi.CNT_SIZE, dtype=np.int64)
            st.counters[: len(saved["counters"])] = saved["counters"]
            self._states[model] = st


class SGD(Optimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD`` defines it.

    For each parameter ``p`` with gradient ``g`` at step k (learning rate
    ``lr_k``, from the schedule)::

        g   = g + weight_decay · p
        buf = g                                   on the first step
        buf = momentum · buf + (1 − dampening) · g  afterwards
        g   = g + momentum · buf   if nesterov  else  buf     (when momentum > 0)
        p   = p − lr_k · g

    Parameters
    ----------
    lr : float
        Learning rate, finite and > 0 (the schedule's base rate).
    momentum : float, default 0
        Momentum factor, >= 0.
    dampening : float, default 0
        Dampening for momentum; must be 0 with ``nesterov``.
    weight_decay : float, default 0
        L2 penalty, >= 0 (applied to the weight and the bias, as torch does).
    nesterov : bool, default False
        Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
    schedule : fastlin.schedules.Schedule, optional
        How the learning rate moves with the steps (see
        :mod:`fastlin.schedules`); constant when omitted.

    Notes
    -----
    One optimiser can step several models; it keeps a separate state for
    each (held weakly, so it goes when the model goes): the momentum
    buffers, the step count and the schedule's position.
    """

    _NAMES = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "schedule")
    _RULE = abi.RULE_SGD

    def __init__(
        self,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        schedule: Schedule | None = None,
    ) -> None:
        self._set_all(
            dict(
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
                schedule=schedule,
            )
        )
        self._init_caches()

    @staticmethod
    def _check(lr, momentum, dampening, weight_decay, nesterov, schedule):
        """Validate SGD's hyper-parameters as torch does (and refuse NaN/Inf)."""
        lr = _validate.check_real(lr, "lr", minimum=0.0, strict=True)
        momentum = _validate.check_real(momentum, "momentum", minimum=0.0)
        dampening = _validate.check_real(dampening, "dampening")
        weight_decay = _validate.check_real(weight_decay, "weight_decay", minimum=0.0)
        nesterov = _validate.check_bool(nesterov, "nesterov")
        if nesterov and (momentum <= 0.0 or dampening != 0.0):
            raise ValueError(
                "nesterov momentum requires momentum > 0 and dampening == 0, "
                f"got momentum={momentum}, dampening={dampening}"
            )
        return lr, momentum, dampening, weight_decay, nesterov, _check_schedule(schedule)

    def _encode(self, rec):
        rec["lr"] = self.lr
        rec["momentum"] = self.momentum
        rec["dampening"] = self.dampening
        rec["weight_decay"] = self.weight_decay
        rec["nesterov"] = self.nesterov

    def _n_slots(self):
        return 1 if self.momentum else 0


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` defines it.

    For each parameter ``p`` with gradient ``g`` at step ``t = 1, 2, ...``
    (learning rate ``lr_t`` from the schedule)::

        g = g + weight_decay · p                     (L2 penalty, in the gradient)
        m = β1 · m + (1 − β1) · g
        v = β2 · v + (1 − β2) · g²
        v̂ = max(v̂, v)  with amsgrad, else  v̂ = v
        p = p − lr_t / (1 − β1^t) · m / (√v̂ / √(1 − β2^t) + eps)

    Parameters
    ----------
    lr : float, default 1e-3
        Learning rate, finite and > 0 (the schedule's base rate).
    betas : (float, float), default (0.9, 0.999)
        Decay rates of the two moment estimates, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, finite and >= 0.
    weight_decay : float, default 0
        L2 penalty (>= 0) added to the gradient; reaches the bias too, as in torch.
    amsgrad : bool, default False
        Use the running maximum of ``v`` (Reddi et al.'s AMSGrad).
    schedule : fastlin.schedules.Schedule, optional
        How the learning rate moves with the steps; constant when omitted.

    Notes
    -----
    The moment estimates are kept in the model's dtype beside its weights,
    as torch keeps them; their arithmetic is float64 inside the kernels.
    """

    _NAMES = ("lr", "betas", "eps", "weight_decay", "amsgrad", "schedule")
    _RULE = abi.RULE_ADAM
    _DECOUPLED = False

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        schedule: Schedule | None = None,
    ) -> None:
        self._set_all(dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, schedule=schedule))
        self._init_caches()

    @staticmethod
    def _check(lr, betas, eps, weight_decay, amsgrad, schedule):
        """Validate as torch does (and refuse NaN/Inf)."""
        lr = _validate.check_real(lr, "lr", minimum=0.0, strict=True)
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        beta1 = _validate.check_real(betas[0], "betas[0]", minimum=0.0)
        beta2 = _validate.check_real(betas[1], "betas[1]", minimum=0.0)
        for name, beta in (("betas[0]", beta1), ("betas[1]", beta2)):
            if not beta < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {beta}")
        eps = _validate.check_real(eps, "eps", minimum=0.0)
        weight_decay = _validate.check_real(weight_decay, "weight_decay", minimum=0.0)
        amsgrad = _validate.check_bool(amsgrad, "amsgrad")
        return lr, (beta1, beta2), eps, weight_decay, amsgrad, _check_schedule(schedule)

    def _encode(self, rec):
        rec["lr"] = self.lr
        rec["beta1"], rec["beta2"] = self.betas
        rec["eps"] = self.eps
        rec["weight_decay"] = self.weight_decay
        rec["amsgrad"] = self.amsgrad
        rec["decoupled"] = self._DECOUPLED

    def _n_slots(self):
        return 3 if self.amsgrad else 2


class AdamW(Adam):
    """AdamW, as ``torch.optim.AdamW`` defines it: Adam with decoupled weight decay.

    Each step first shrinks the parameters, ``p = p · (1 − lr_t · weight_decay)``,
    then takes Adam's step with the plain gradient (no L2 term in ``g``).
    The parameters are those of :class:`Adam`, with ``weight_decay``
    defaulting to 1e-2 as in torch.
    """

    _DECOUPLED = True

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        schedule: Schedule | None = None,
    ) -> None:
        super().__init__(lr, betas, eps, weight_decay, amsgrad, schedule=schedule)


def _check_schedule(schedule):
    if schedule is not None and not isinstance(schedule, Schedule):
        raise TypeError(
            f"schedule must be one of fastlin.schedules (e.g. fastlin.schedules.cosine(T_max=100)) "
            f"or None, got {type(schedule).__name__}"
        )
    return schedule


def _from_format_1(saved):
    weight, bias = np.asarray(saved["weight"]), np.asarray(saved["bias"])
    if weight.size:
        weight, bias = weight[None], bias[None]
    else:  # no momentum: no slots (state_for makes them if momentum is set later)
        weight, bias = np.zeros((0, 0, 0), dtype=weight.dtype), np.zeros((0, 0), dtype=bias.dtype)
    return {"slots_w": weight, "slots_b": bias, "counters": np.asarray(saved["flags"])}


_CONSTANT = constant()  # the schedule of an optimiser given none


def _dead_ref():
    return None


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)
