"""128-bit global loads for the CUDA kernels (``ld.global.nc.v4.f32`` /
``ld.global.nc.v2.f64``), with a plain-Python twin for numba's simulator.

numba-cuda lowers ``X[i, j]`` to one 4-byte (or 8-byte) load: it cannot know
that a row starts on a 16-byte boundary, so LLVM never merges neighbouring
loads.  :func:`copy16` loads 16 bytes at ``X[i, j]`` in one instruction (SASS
``LDG.E.128.CONSTANT``) and stores the elements into ``dst[off:off + n]``
(a shared-memory tile), returning ``n`` = 16 / itemsize.  The caller must
guarantee the 16-byte alignment of ``&X[i, j]``: the launch code checks the
base address and that a row's length in bytes is a multiple of 16.

``.nc`` (the read-only data path) is correct because no kernel writes the
array it reads this way (X) during the launch.

Only :mod:`fastlin.backends.cuda_rows` imports this module.
"""

from __future__ import annotations

from numba.cuda import config as _config

SIMULATOR = bool(_config.ENABLE_CUDASIM)

if SIMULATOR:

    def vec_width(X):
        """Elements per 16-byte load of X: 4 (float32) or 2 (float64)."""
        return 16 // X.itemsize

    def copy16(X, i, j, dst, off):
        """``dst[off + q] = X[i, j + q]`` for q < 16 / itemsize; returns that count."""
        n = 16 // X.itemsize
        for q in range(n):
            dst[off + q] = X[i, j + q]
        return n

else:
    from llvmlite import ir
    from numba import types
    from numba.cuda import cgutils
    from numba.cuda.extending import intrinsic

    _ASM = {
        32: ("ld.global.nc.v4.f32 {$0, $1, $2, $3}, [$4];", "=f,=f,=f,=f,l", 4),
        64: ("ld.global.nc.v2.f64 {$0, $1}, [$2];", "=d,=d,l", 2),
    }

    def _check(X):
        if not (
            isinstance(X, types.Array) and X.ndim == 2 and isinstance(X.dtype, types.Float) and X.dtype.bitwidth in _ASM
        ):
            raise TypeError(f"copy16 needs a 2-D float32/float64 array, got {X}")

    @intrinsic
    def vec_width(typingctx, X):
        """Elements per 16-byte load of X: 4 (float32) or 2 (float64)."""
        _check(X)
        n = _ASM[X.dtype.bitwidth][2]

        def codegen(context, builder, sig, args):
            return context.get_constant(types.intp, n)

        return types.intp(X), codegen

    @intrinsic
    def copy16(typingctx, X, i, j, dst, off):
        """``dst[off + q] = X[i, j + q]`` for q < 16 / itemsize in one 16-byte
        load; returns that count.  ``&X[i, j]`` must be 16-byte aligned."""
        _check(X)
        if not (isinstance(dst, types.Array) and dst.ndim == 1 and dst.dtype == X.dtype):
            raise TypeError(f"copy16 stores into a 1-D array of {X.dtype}, got {dst}")
        asm_text, constraints, n = _ASM[X.dtype.bitwidth]

        def codegen(context, builder, sig, args):
            xty, ity, jty, dty, oty = sig.args
            xv, iv, jv, dv, ov = args
            iv = context.cast(builder, iv, ity, types.intp)
            jv = context.cast(builder, jv, jty, types.intp)
            ov = context.cast(builder, ov, oty, types.intp)
            xarr = context.make_array(xty)(context, builder, value=xv)
            src = cgutils.get_item_pointer(context, builder, xty, xarr, [iv, jv], wraparound=False)
            elem = context.get_value_type(xty.dtype)
            fnty = ir.FunctionType(ir.LiteralStructType([elem] * n), [src.type])
            loaded = builder.call(ir.InlineAsm(fnty, asm_text, constraints), [src])
            darr = context.make_array(dty)(context, builder, value=dv)
            for q in range(n):
                idx = builder.add(ov, context.get_constant(types.intp, q))
                ptr = cgutils.get_item_pointer(context, builder, dty, darr, [idx], wraparound=False)
                builder.store(builder.extract_value(loaded, q), ptr)
            return context.get_constant(types.intp, n)

        return types.intp(X, i, j, dst, off), codegen
