"""Stochastic gradient descent with ``torch.optim.SGD``'s semantics."""

from __future__ import annotations

import threading
import weakref

import numpy as np

from . import _validate
from ._typing import ArrayLike, Linear
from .backends import abi


class _ModelState:
    """Momentum buffers of one model, on that model's device.

    ``flags`` is the int64 vector the kernels read and write: whether the
    momentum buffers hold a value yet, and a fit's epoch and position.
    """

    __slots__ = ("device", "weight", "bias", "flags")

    def has_buffers(self):
        return self.weight.size > 0

    def __init__(self, ops, weight_shape, n_out, dtype, momentum):
        self.device = ops.name
        if momentum:
            self.weight = ops.zeros(weight_shape, dtype)
            self.bias = ops.zeros((n_out,), dtype)
        else:  # never read by the kernels; keeps the argument types fixed
            self.weight = ops.zeros((0, 0), dtype)
            self.bias = ops.zeros((0,), dtype)
        self.flags = np.zeros(abi.ST_SIZE, dtype=np.int64)  # host memory on every device


class SGD:
    """Stochastic gradient descent, as ``torch.optim.SGD`` defines it.

    For each parameter ``p`` with gradient ``g``::

        g   = g + weight_decay · p
        buf = g                                   on the first step
        buf = momentum · buf + (1 − dampening) · g  afterwards
        g   = g + momentum · buf   if nesterov  else  buf     (when momentum > 0)
        p   = p − lr · g

    Parameters
    ----------
    lr : float
        Learning rate, finite and > 0.
    momentum : float, default 0
        Momentum factor, >= 0.
    dampening : float, default 0
        Dampening for momentum; must be 0 with ``nesterov``.
    weight_decay : float, default 0
        L2 penalty, >= 0 (applied to the weight and the bias, as torch does).
    nesterov : bool, default False
        Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.

    Notes
    -----
    One optimiser can step several models; it keeps separate momentum
    buffers for each (held weakly, so they go when the model goes).
    """

    _HYPER = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    def __init__(
        self,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        values = _check_hyper(lr, momentum, dampening, weight_decay, nesterov)
        for key, value in zip(self._HYPER, values):
            object.__setattr__(self, key, value)
        self._states = weakref.WeakKeyDictionary()
        self._init_caches()

    def _init_caches(self):
        """The lock and caches (never pickled: rebuilt here)."""
        self._hyper = {}
        # Bumped after every change of a hyper-parameter: a vector cached
        # under an older generation is stale (even one a concurrent hyper()
        # call stored after the change).
        self._generation = 0
        self._lock = threading.Lock()  # guards creating and dropping states
        self._resets = 0  # bumped by reset(): a remembered state may be gone
        # The state handed out last, with what it was valid for: a step loop
        # asks for the same model's state again and again, and a weak-keyed
        # lookup costs ~5% of a small step.
        self._last = (_dead_ref, None, -1, -1)

    # ------------------------------------------------------------------
    # pickle and copy
    # ------------------------------------------------------------------
    def __getstate__(self):
        """Plain data: the hyper-parameters and, for each model this
        optimiser has stepped, that model and host copies of its momentum
        buffers and flags.

        The models are pickled by reference, so ``pickle.dumps((model, opt))``
        and ``copy.deepcopy((model, opt))`` give an optimiser whose state
        belongs to the copied model.  An optimiser pickled without its models
        carries copies of them that nothing else holds: on loading they go
        at once, and their state with them (the buffers are kept weakly).
        """
        with self._lock:  # only to list the states; each is read under its model's lock
            items = list(self._states.items())
        states = []
        for model, st in items:
            with model._lock:  # not halfway through a step of that model
                states.append((model, {"weight": _host(st.weight), "bias": _host(st.bias), "flags": st.flags.copy()}))
        return {"format": PICKLE_FORMAT, "hyper": {k: getattr(self, k) for k in self._HYPER}, "states": states}

    def __setstate__(self, state):
        if not isinstance(state, dict) or state.get("format") != PICKLE_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"cannot restore a fastlin.SGD from this pickle (format {got!r}; this fastlin reads {PICKLE_FORMAT})"
            )
        values = _check_hyper(**state["hyper"])
        for key, value in zip(self._HYPER, values):
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_states", weakref.WeakKeyDictionary())
        self._init_caches()
        for model, saved in state["states"]:
            ops = model._ops  # the model is restored before the optimiser that refers to it
            st = _ModelState.__new__(_ModelState)
            st.device = ops.name
            st.weight = ops.from_host(np.asarray(saved["weight"]))
            st.bias = ops.from_host(np.asarray(saved["bias"]))
            st.flags = np.array(saved["flags"], dtype=np.int64)
            self._states[model] = st

    def __repr__(self):
        return (
            f"SGD(lr={self.lr}, momentum={self.momentum}, dampening={self.dampening}, "
            f"weight_decay={self.weight_decay}, nesterov={self.nesterov})"
        )

    def __setattr__(self, name, value):
        # A hyper-parameter changed later (a learning-rate schedule, say) is
        # validated like one given to __init__, and the cached vector dropped.
        if name in self._HYPER:
            values = {key: getattr(self, key) for key in self._HYPER}
            values[name] = value
            checked = _check_hyper(**values)
            value = checked[self._HYPER.index(name)]
            object.__setattr__(self, name, value)
            object.__setattr__(self, "_generation", self._generation + 1)
            return
        object.__setattr__(self, name, value)

    def reset(self, model: Linear | None = None) -> None:
        """Forget the momentum buffers (of ``model``, or of every model)."""
        with self._lock:
            self._resets += 1
            if model is None:
                self._states.clear()
            else:
                self._states.pop(model, None)

    def apply(self, model: Linear, weight_grad: ArrayLike, bias_grad: ArrayLike | None = None) -> None:
        """Update ``model`` in place from gradients computed elsewhere.

        For layers trained through :meth:`fastlin.Linear.backward` (a layer
        inside a larger model) or gradients summed across machines.

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
        from .layer import _apply_gradients

        _apply_gradients(model, self, weight_grad, bias_grad)

    def hyper(self, reduction_sum, dtype):
        """The float64 hyper-parameter vector the kernels read (cached).

        Internal: used by fastlin's layers and backends (layout in
        :mod:`fastlin.backends.abi`).  A vector once returned is never
        changed: after ``opt.lr = ...`` the next call returns a new one, so a
        fit asks again before each compiled call.
        """
        # Keyed by dtype alone (a tuple key costs more to hash than the rest
        # of this call); one entry holds the vectors of both reductions.
        generation = self._generation  # read before the values (see __init__)
        got = self._hyper.get(dtype)
        if got is None or got[0] != generation:
            got = self._hyper[dtype] = (generation, self._hyper_vector(False, dtype), self._hyper_vector(True, dtype))
        return got[2] if reduction_sum else got[1]

    def _hyper_vector(self, reduction_sum, dtype):
        hp = np.empty(abi.HP_SIZE, dtype=np.float64)
        hp[abi.HP_LR] = self.lr
        hp[abi.HP_MOMENTUM] = self.momentum
        hp[abi.HP_DAMPENING] = self.dampening
        hp[abi.HP_WEIGHT_DECAY] = self.weight_decay
        hp[abi.HP_NESTEROV] = float(self.nesterov)
        hp[abi.HP_SUM] = float(reduction_sum)
        hp[abi.HP_MAX] = float(np.finfo(dtype).max)
        return hp

    def state_for(self, model, ops):
        """The momentum state of ``model``, created or moved to its device.

        Internal: used by fastlin's layers and backends.
        """
        ref, st, generation, resets = self._last
        if ref() is model and generation == self._generation and resets == self._resets and st.device == ops.name:
            return st  # the common case: the same model as last time, nothing changed
        generation, resets = self._generation, self._resets  # read before the state
        st = self._states.get(model)
        if st is not None and st.device == ops.name and (st.has_buffers() or not self.momentum):
            self._last = (weakref.ref(model), st, generation, resets)
            return st  # no lock taken
        with self._lock:  # models stepped from several threads share this dict
            st = self._states.get(model)
            if st is None or (self.momentum and not st.has_buffers()):
                st = _ModelState(ops, model._W.shape, model.out_features, model.dtype, self.momentum)
                self._states[model] = st
            elif st.device != ops.name:
                st.weight = ops.from_host(_host(st.weight))
                st.bias = ops.from_host(_host(st.bias))
                st.device = ops.name
            self._last = (weakref.ref(model), st, generation, resets)
            return st


def _check_hyper(lr, momentum, dampening, weight_decay, nesterov):
    """Validate SGD's hyper-parameters as torch does (and refuse NaN/Inf)."""
    lr = _validate.check_real(lr, "lr", minimum=0.0, strict=True)
    momentum = _validate.check_real(momentum, "momentum", minimum=0.0)
    dampening = _validate.check_real(dampening, "dampening")
    weight_decay = _validate.check_real(weight_decay, "weight_decay", minimum=0.0)
    nesterov = _validate.check_bool(nesterov, "nesterov")
    if nesterov and (momentum <= 0.0 or dampening != 0.0):
        raise ValueError(
            f"nesterov momentum requires momentum > 0 and dampening == 0, got momentum={momentum}, dampening={dampening}"
        )
    return lr, momentum, dampening, weight_decay, nesterov


PICKLE_FORMAT = 1


def _dead_ref():
    return None


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)
