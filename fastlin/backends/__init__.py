"""Backends: where fastlin's arithmetic happens.

Each device has two modules with matching names:

``cpu.py`` / ``cuda.py``
    The kernels (``@njit`` / ``cuda.jit``).  Private, allocate nothing,
    write into their arguments.  The same operation has the same name in
    both: ``forward``, ``sse``, ``model_sse``, ``mse_grad``, ``backward``,
    ``fused_step``, ``fit_steps``.
``cpu_ops.py`` / ``cuda_ops.py``
    The backend interface :class:`fastlin.Linear` calls.  Each allocates
    outputs and scratch, picks a kernel (or launch configuration) and calls
    it.  Both modules provide::

        name                                  "cpu" / "cuda"
        as_input(a, name, dtype)              user data -> backend array (C-contiguous, dtype)
        from_host(a) / to_host(a)             copies between numpy and the backend
        empty(shape, dtype) / zeros(...)      backend arrays
        copy_into(dst, src)                   dst[...] = src (src may be host or backend)
        all_finite(a) -> bool
        forward(W, b, has_bias, X) -> Y
        sse(P, T) -> float
        model_sse(W, b, has_bias, X, T, ws=None) -> float
        mse_grad(W, b, has_bias, X, T, scale, ws, dtype=None) -> (sse, dW, db)
        backward(W, X, dY, ws) -> (dX, dW, db)
        fused_step(W, b, has_bias, bufW, bufb, hp, flags, X, T, ws) -> (loss, status)
        sgd_update(W, b, has_bias, bufW, bufb, hp, flags, gW, gb, scale) -> status
        fit_plan(n_rows, n_out, n_in, batch_size, shuffle, seed, dtype) -> plan
        fit_steps(W, b, has_bias, bufW, bufb, hp, flags, X, T, plan, losses) -> (done, status)

    ``hp``, ``flags`` and the status codes are defined in :mod:`.abi`;
    ``flags`` is always a host numpy array.  ``ws`` is a dict the model owns,
    for cached scratch.  Inputs arrive validated: the right shapes, the
    model's dtype, C-contiguous.

The layer never imports a kernel module, and no backend imports the layer.
"""
