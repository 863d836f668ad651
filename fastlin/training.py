"""The rules of training, each written once.

Used by :meth:`fastlin.Linear.fit`, :meth:`~fastlin.Linear.step`,
:meth:`fastlin.SGD.apply` (through the layer) and :func:`fastlin.dask.fit`:

- the normalisation of a fit's arguments (steps or epochs, batch, shuffle,
  seed, optimiser);
- the compiled loop of :meth:`Linear.fit`, run in segments so that logging,
  callbacks, progress and Ctrl-C stay responsive (:class:`CompiledFit`);
- what a user sees after each step (:class:`Hooks`);
- the snapshot that undoes a fit stopped by bad data, and the
  :class:`~fastlin.DivergenceError` a diverged one raises;
- the update from gradients computed elsewhere (:func:`apply_gradients`).

It reaches a model through its parameters (``_W``, ``_bvec``, ``has_bias``,
``_ops``) and never imports the layer.
"""

from __future__ import annotations

import logging
import random
import time

import numpy as np

from . import _log, _validate
from ._errors import DivergenceError
from ._progress import progress as _progress
from .backends.abi import CNT_EPOCH, CNT_POS, CNT_STEP, NONFINITE_LOSS, OK
from .history import History
from .optim import SGD, Optimizer

logger = logging.getLogger("fastlin")

DEFAULT_STEPS = 100  # the seed post's loop length
DEFAULT_LR = 0.01
# A fit runs in one compiled call when its work is below this many
# multiply-adds (well under a second); longer fits run in segments of about
# SEGMENT_SECONDS so that logging, progress and Ctrl-C stay responsive.
ONE_CALL_WORK = 1 << 27
SEGMENT_SECONDS = 0.1
# First size of a fit's loss buffer when it runs in segments (it then doubles).
HISTORY_START = 1024


# --------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------
_SHORTCUT = "lr-shortcut"  # the cache key of check_optimizer's SGD


def check_optimizer(opt, lr=None, *, default_lr=DEFAULT_LR, cache=None):
    """``opt``, or ``SGD(lr)`` when only ``lr`` (or neither) is given.

    With a ``cache`` dict (the model's), the ``SGD(lr)`` of the last such
    call is handed out again for the same ``lr``: plain SGD keeps no state
    that changes a result (no buffers, a constant rate), and reusing it saves
    the optimiser's set-up, about half of a small fit's time.
    """
    if opt is None:
        value = default_lr if lr is None else lr
        if cache is None:
            return SGD(value)
        kept = cache.get(_SHORTCUT)
        # (exact float/int only: SGD checks anything else, bool included)
        if kept is not None and type(value) in (float, int) and value == kept.lr:
            return kept
        kept = cache[_SHORTCUT] = SGD(value)
        return kept
    if lr is not None:
        raise ValueError("give lr or opt, not both (the optimiser carries its own lr)")
    if not isinstance(opt, Optimizer):
        raise TypeError(f"opt must be a fastlin.SGD, fastlin.Adam or fastlin.AdamW, got {type(opt).__name__}")
    return opt


def check_loop_args(steps, epochs, shuffle, seed, callback):
    """Validate the arguments every fit takes; returns them cleaned."""
    steps = _validate.check_int(steps, "steps", 0, allow_none=True)
    epochs = _validate.check_int(epochs, "epochs", 0, allow_none=True)
    if steps is not None and epochs is not None:
        raise ValueError("give steps or epochs, not both")
    shuffle = _validate.check_bool(shuffle, "shuffle")
    seed = _validate.check_seed(seed)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    return steps, epochs, shuffle, seed, callback


def resolve_loop(steps, epochs, steps_per_epoch, shuffle, seed):
    """``(steps, shuffle, seed)`` of a fit whose epoch takes ``steps_per_epoch`` steps.

    Neither steps nor epochs: the seed post's 100 steps.  Only a fit with
    more than one batch per epoch has an order to shuffle; a shuffled fit
    given no seed draws one (kept in History.seed, to repeat the fit).
    """
    if steps is None:
        steps = DEFAULT_STEPS if epochs is None else epochs * steps_per_epoch
    shuffle = shuffle and steps_per_epoch > 1
    if shuffle and seed is None:
        seed = random.getrandbits(63)
    elif isinstance(seed, np.random.Generator):
        seed = int(seed.integers(1 << 63))
    return steps, shuffle, seed


# --------------------------------------------------------------------------
# failure
# --------------------------------------------------------------------------
def divergence(status, loss, step, opt, history):
    """The DivergenceError for a step that returned ``status`` (not OK)."""
    what = f"the loss is {loss}" if status == NONFINITE_LOSS else "the update would make a weight NaN or Inf"
    return DivergenceError(
        f"training diverged at step {step}: {what}. The weights of the last finite step were kept. "
        f"Try a smaller learning rate (lr={opt.lr}) or scale the inputs (e.g. standardise X).",
        step=step,
        loss=loss,
        history=history,
    )


class Snapshot:
    """Host copies of a model's parameters and its optimiser state, to undo
    a fit that met bad data after some updates."""

    def __init__(self, model, state):
        ops = model._ops
        self._ops = ops
        self._state = state
        self._arrays = [(dst, ops.to_host(dst)) for dst in (model._W, model._bvec, *state.arrays())]
        self._counters = state.counters.copy()

    def restore(self):
        for dst, saved in self._arrays:
            self._ops.copy_into(dst, saved)
        self._state.counters[:] = self._counters


def learning_rates(opt, hyper, first_step, n):
    """The learning rates of ``n`` steps from the model's step ``first_step``
    under ``hyper`` (the record those steps ran with)."""
    if opt.schedule is None:
        rates = np.empty(n)  # (empty + fill, and the field before the row: 0.6 µs against 2.5 for np.full)
        rates.fill(hyper["lr"][0])
        return rates
    from .backends import cpu_ops  # compiled code: thousands of steps cost microseconds, not milliseconds

    return cpu_ops.learning_rates(hyper, first_step, n)


# --------------------------------------------------------------------------
# what the user sees after each step
# --------------------------------------------------------------------------
class Hooks:
    """``log_every``, ``callback``, ``epoch_callback`` and the progress bar of one fit.

    ``batch_rows`` gives the rows of each batch of an epoch (the last one
    may be shorter): the epoch's loss is the mean of its batches' losses
    weighted by their rows, i.e. the mean over the epoch's rows.
    """

    def __init__(self, total, log_every=0, callback=None, progress=False, epoch_callback=None, batch_rows=None):
        self.total, self.log_every, self.callback = total, log_every, callback
        self.epoch_callback = epoch_callback
        self.batch_rows = None if batch_rows is None else np.asarray(batch_rows, dtype=np.float64)
        self.per_epoch = 1 if batch_rows is None else len(batch_rows)
        self.active = bool(log_every or callback or progress or epoch_callback)
        self.bar = _progress(total, progress)
        self._epoch_losses = []

    def steps_to_epoch_end(self, done):
        """Steps from step ``done`` to the end of its epoch (a segment must
        stop there when an epoch callback is set); None without one."""
        if self.epoch_callback is None:
            return None
        return self.per_epoch - done % self.per_epoch

    def report(self, segment_losses, done):
        """Log, call back and draw progress for the steps just run (steps
        ``done + 1 ...``); True when a callback asks to stop."""
        for j, loss in enumerate(segment_losses.tolist(), start=done + 1):
            if self.log_every and j % self.log_every == 0:
                _log.info(
                    logger, "step %d/%d: loss %.9g", j, self.total, loss
                )  # printed when logging is not configured
            if self.callback is not None and self.callback(j, loss):
                self.bar.update(j, loss)
                return True
            if self.epoch_callback is not None:
                self._epoch_losses.append(loss)
                if len(self._epoch_losses) == self.per_epoch:
                    losses, self._epoch_losses = np.array(self._epoch_losses), []
                    mean = float(losses @ self.batch_rows / self.batch_rows.sum())
                    if self.epoch_callback(j // self.per_epoch, mean):
                        self.bar.update(j, loss)
                        return True
        if len(segment_losses):
            self.bar.update(done + len(segment_losses), segment_losses[-1])
        return False

    def close(self):
        self.bar.close()


# --------------------------------------------------------------------------
# Linear.fit's loop
# --------------------------------------------------------------------------
_PLANS_KEPT = 4  # fit plans kept per model (each holds its scratch)


def _fit_plan(model, n_rows, batch, shuffle, seed):
    """The backend's plan for a fit of this shape, kept in the model's step
    scratch (used under the model's lock) so that repeated fits neither plan
    nor allocate again.  Only a shuffled fit's plan depends on the seed."""
    shuffled = shuffle and batch < n_rows
    key = ("fit-plan", n_rows, batch, shuffled, seed if shuffled else None, model._ops.__name__)
    ws = model._step_ws
    plan = ws.get(key)
    if plan is None:
        plans = [k for k in list(ws) if isinstance(k, tuple) and k[0] == "fit-plan"]
        for old in plans[: max(0, len(plans) - _PLANS_KEPT + 1)]:
            del ws[old]
        ops = model._ops
        plan = ws[key] = ops.fit_plan(n_rows, model.out_features, model.in_features, batch, shuffle, seed, model.dtype)
    return plan


class CompiledFit:
    """One call of ``Linear.fit``: runs the backend's compiled loop in
    segments and turns status codes into exceptions.  The caller holds the
    model's lock."""

    def __init__(self, model, opt, X, T, reduce_sum, batch, shuffle, seed, check_finite):
        ops = model._ops
        self.model, self.opt, self.ops = model, opt, ops
        self.X, self.T = X, T
        self.seed = seed
        self.check_finite = check_finite
        self.state = opt.state_for(model, ops)
        self.reduce_sum = reduce_sum
        self.plan = _fit_plan(model, X.shape[0], batch, shuffle, seed)
        self.work_per_step = batch * model.out_features * model.in_features
        # Bad data found after some updates must undo them.  Only mini-batch
        # fits can get that far: a full batch meets all of the data at step 1.
        self.needs_snapshot = check_finite and batch < X.shape[0]

    def _segment(self, done, total, seconds_per_step, hooks):
        """How many steps the next compiled call runs."""
        left = total - done
        if not hooks.active and left * self.work_per_step <= ONE_CALL_WORK:
            return left
        if seconds_per_step is None:
            return 1  # measure one step first
        return max(1, min(left, int(SEGMENT_SECONDS / max(seconds_per_step, 1e-9))))

    def run(self, total, hooks):
        ops, m, st = self.ops, self.model, self.state
        snapshot = Snapshot(m, st) if self.needs_snapshot else None
        st.counters[CNT_EPOCH] = st.counters[CNT_POS] = 0  # a fit starts at epoch 0, row 0
        losses, capacity = None, 0  # allocated, then grown, as the fit goes (steps may be huge)
        rates = []
        done, seconds_per_step, stopped = 0, None, False
        start = time.perf_counter()
        try:
            while done < total and not stopped:
                k = 1 if hooks.callback else self._segment(done, total, seconds_per_step, hooks)
                to_epoch_end = hooks.steps_to_epoch_end(done)
                if to_epoch_end is not None:
                    k = min(k, to_epoch_end)
                if done + k > capacity:
                    # Capacity at least doubles (from HISTORY_START), so copies cost O(1)
                    # a step and memory follows the steps run; a fit run in one call
                    # gets one buffer of exactly its length.
                    end = done + k
                    capacity = total if end == total else min(total, max(end, 2 * capacity, HISTORY_START))
                    grown = ops.empty((capacity,), np.float64)
                    if done:
                        ops.copy_into(grown[:done], losses[:done])
                    losses = grown
                # Asked before every call: user code (a callback) may have changed opt.lr.
                hyper = self.opt.hyper()
                first_step = int(st.counters[CNT_STEP])
                t0 = time.perf_counter()
                n, status = ops.fit_steps(
                    self.X, self.T, m._W, m._bvec, m.has_bias, st, hyper, self.reduce_sum, self.plan,
                    losses[done : done + k],
                )  # fmt: skip
                seconds_per_step = (time.perf_counter() - t0) / max(n, 1)
                rates.append(learning_rates(self.opt, hyper, first_step, n))
                if status != OK:
                    self._fail(status, losses, done, n, rates, snapshot, time.perf_counter() - start)
                if hooks.active and n:
                    stopped = hooks.report(ops.to_host(losses[done : done + n]), done)
                done += n
        finally:
            hooks.close()
        seconds = time.perf_counter() - start
        history = np.empty(0, dtype=np.float64) if losses is None else ops.to_host(losses[:done])
        return History(history, seconds, self.seed, stopped_early=stopped, lr=_joined(rates))

    def _fail(self, status, losses, done, n, rates, snapshot, seconds):
        failed_step = done + n + 1
        loss = float(self.ops.to_host(losses[done + n : done + n + 1])[0])
        if self.check_finite:
            try:
                self.model._check_data(self.X, self.T)
            except ValueError:
                if snapshot is not None:
                    snapshot.restore()  # bad data: the fit never happened
                raise
        history = History(self.ops.to_host(losses[: done + n]), seconds, self.seed, lr=_joined(rates))
        raise divergence(status, loss, failed_step, self.opt, history)


def batch_rows(n_rows, batch):
    """The rows of each batch of an epoch of ``n_rows`` in batches of ``batch``."""
    per_epoch = -(-n_rows // batch)
    rows = np.full(per_epoch, batch, dtype=np.int64)
    rows[-1] = n_rows - batch * (per_epoch - 1)
    return rows


def _joined(parts):
    if len(parts) == 1:
        return parts[0]  # a fit run in one call: no copy
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float64)


# --------------------------------------------------------------------------
# one step, and gradients from elsewhere
# --------------------------------------------------------------------------
def fused_step(model, opt, X, T, reduce_sum):
    """One step on (X, T); returns ``(loss, status)``.  The caller holds the lock."""
    st = opt.state_for(model, model._ops)
    return model._ops.fused_step(
        X, T, model._W, model._bvec, model.has_bias, st, opt.hyper(), reduce_sum, model._step_ws
    )


def apply_gradients(model, opt, weight_grad, bias_grad):
    """``opt.apply``'s body: validate the gradients, then update (or raise)."""
    ops = model._ops
    gW = _validate.host_param(weight_grad, "weight_grad", np.float64)
    if gW.shape != (model.out_features, model.in_features):
        raise ValueError(f"weight_grad must have shape {(model.out_features, model.in_features)}, got {gW.shape}")
    if model.has_bias:
        if bias_grad is None:
            raise ValueError("this layer has a bias: give bias_grad too")
        gb = _validate.host_param(bias_grad, "bias_grad", np.float64)
        if gb.shape != (model.out_features,):
            raise ValueError(f"bias_grad must have shape ({model.out_features},), got {gb.shape}")
    elif bias_grad is not None:
        raise ValueError("this layer has no bias: bias_grad must be None")
    else:
        gb = np.zeros(model.out_features)
    with model._lock:
        st = opt.state_for(model, ops)
        status = ops.apply_update(gW, gb, 1.0, model._W, model._bvec, model.has_bias, st, opt.hyper())
    if status != OK:
        raise divergence(status, float("nan"), 1, opt, None)
