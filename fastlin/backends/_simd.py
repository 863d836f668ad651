"""Numba intrinsics that the CPU kernels need and Numba does not offer.

``prefetch(a, i, j)``
    Asks the cache for the line holding ``a[i, j]`` of a 2-D array
    (``llvm.prefetch``: a read, kept in every cache level -- ``prefetcht0``
    on x86-64 -- of data).  A shuffled mini-batch meets its rows at random
    addresses; the permutation is known ahead, so the kernel asks for rows
    some positions ahead (``cpu._prefetch_rows``).  A hint: it never faults
    and changes nothing.

``Vec8`` values: eight lanes of the data's dtype in one LLVM vector
    (``<8 x float>``, one AVX2 register; ``<8 x double>``, two).  The
    many-output kernel keeps a tile of 8 rows x 8 outputs in eight of them.
    Written with scalars instead, LLVM's loop vectorizer turns each of the 64
    accumulators into a reduction over d (fastlin compiles with ``reassoc``)
    and spills them; vector-typed values are left as they are.

    ``vzeros8(a)``: zeros of ``a``'s dtype.  ``vload8(a, i, j)``: the 8
    elements ``a[i, j : j + 8]`` of a C-contiguous 2-D array.
    ``vbroadcast8(a, i, j)``: every lane ``a[i, j]``.
    ``vmuladd8(acc, x, v)``: ``acc + x·v`` for a ``Vec8`` or scalar ``x``
    (one fused multiply-add where the target has it, as ``contract`` allows).
    ``vstore8(a, i, j, v)``: ``a[i, j : j + 8] = v``.

For the Gram pass's shift (``cpu_gram._fill32``): ``vsub8(a, b)``, ``a − b``;
    ``vload8_first(a, i, j, count)``, the ``count`` (< 8) elements from
    ``a[i, j]`` and zeros after them, reading nothing past them (a masked
    load: the end of a row or of the array); and a range test kept as a lane
    mask until one reduction: ``vmask8(a)`` (no lanes), ``voutside8(mask, v,
    lo, hi)`` (adds the lanes where ``v`` is nonzero and ``|v|`` is outside
    ``[lo, hi]``, NaN included), ``vany8(mask)``.

Every address is formed from the array's strides without a bounds check:
the callers pass indices they know to be in range.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.datamodel import models
from numba.extending import intrinsic, register_model

LANES = 8

# llvm.prefetch(ptr, rw, locality, cache type): a read (0), kept in every
# cache level (3, the highest locality: x86 prefetcht0), of data (1).
_RW_READ = 0
_LOCALITY = 3
_DATA_CACHE = 1


def _is_2d(a):
    return isinstance(a, types.Array) and a.ndim == 2


def _item_pointer(context, builder, aty, ary, ity, i, jty, j):
    arr = context.make_array(aty)(context, builder, ary)
    idx = [context.cast(builder, i, ity, types.intp), context.cast(builder, j, jty, types.intp)]
    return cgutils.get_item_pointer(context, builder, aty, arr, idx, wraparound=False, boundscheck=False)


@intrinsic
def prefetch(typingctx, a, i, j):
    """Prefetch the cache line holding ``a[i, j]`` (``a`` a 2-D array)."""
    if not (_is_2d(a) and isinstance(i, types.Integer) and isinstance(j, types.Integer)):
        return None
    sig = types.void(a, i, j)

    def codegen(context, builder, signature, args):
        aty, ity, jty = signature.args
        ptr = _item_pointer(context, builder, aty, args[0], ity, args[1], jty, args[2])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(_RW_READ), i32(_LOCALITY), i32(_DATA_CACHE)])
        return context.get_dummy_value()

    return sig, codegen


class Vec8(types.Type):
    """Eight lanes of a float dtype, held in one LLVM vector value."""

    def __init__(self, dtype):
        self.dtype = dtype
        super().__init__(name=f"Vec8({dtype})")


@register_model(Vec8)
class _Vec8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        lane = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(lane, LANES))


def _float_array(a):
    return isinstance(a, types.Array) and isinstance(a.dtype, types.Float)


@intrinsic
def vzeros8(typingctx, a):
    """A ``Vec8`` of zeros in the dtype of the array ``a``."""
    if not _float_array(a):
        return None
    vty = Vec8(a.dtype)
    sig = vty(a)

    def codegen(context, builder, signature, args):
        return ir.Constant(context.get_value_type(vty), None)

    return sig, codegen


@intrinsic
def vload8(typingctx, a, i, j):
    """``a[i, j : j + 8]`` of a C-contiguous 2-D float array, as a ``Vec8``."""
    if not (_is_2d(a) and _float_array(a) and isinstance(i, types.Integer) and isinstance(j, types.Integer)):
        return None
    vty = Vec8(a.dtype)
    sig = vty(a, i, j)

    def codegen(context, builder, signature, args):
        aty, ity, jty = signature.args
        ptr = _item_pointer(context, builder, aty, args[0], ity, args[1], jty, args[2])
        vptr = builder.bitcast(ptr, context.get_value_type(vty).as_pointer())
        return builder.load(vptr, align=context.get_abi_sizeof(context.get_value_type(aty.dtype)))

    return sig, codegen


@intrinsic
def vstore8(typingctx, a, i, j, v):
    """``a[i, j : j + 8] = v`` for a C-contiguous 2-D float array."""
    if not (_is_2d(a) and _float_array(a) and isinstance(v, Vec8) and v.dtype == a.dtype):
        return None
    sig = types.void(a, i, j, v)

    def codegen(context, builder, signature, args):
        aty, ity, jty, vty = signature.args
        ptr = _item_pointer(context, builder, aty, args[0], ity, args[1], jty, args[2])
        vptr = builder.bitcast(ptr, context.get_value_type(vty).as_pointer())
        builder.store(args[3], vptr, align=context.get_abi_sizeof(context.get_value_type(aty.dtype)))
        return context.get_dummy_value()

    return sig, codegen


def _splat(builder, llvty, x):
    v = builder.insert_element(ir.Constant(llvty, ir.Undefined), x, ir.IntType(32)(0))
    return builder.shuffle_vector(
        v, ir.Constant(llvty, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
    )


@intrinsic
def vbroadcast8(typingctx, a, i, j):
    """A ``Vec8`` with every lane ``a[i, j]`` (``a`` a 2-D float array)."""
    if not (_is_2d(a) and _float_array(a) and isinstance(i, types.Integer) and isinstance(j, types.Integer)):
        return None
    vty = Vec8(a.dtype)
    sig = vty(a, i, j)

    def codegen(context, builder, signature, args):
        aty, ity, jty = signature.args
        # no wraparound test on the indices, unlike a[i, j]: in an inner loop
        # those tests cost registers and instructions for every load
        ptr = _item_pointer(context, builder, aty, args[0], ity, args[1], jty, args[2])
        return _splat(builder, context.get_value_type(vty), builder.load(ptr))

    return sig, codegen


@intrinsic
def vmuladd8(typingctx, acc, x, v):
    """``acc + x·v`` lane by lane, ``x`` a ``Vec8`` or a scalar (``llvm.fmuladd``)."""
    if not (isinstance(acc, Vec8) and isinstance(v, Vec8) and acc.dtype == v.dtype):
        return None
    if not (isinstance(x, types.Number) or (isinstance(x, Vec8) and x.dtype == acc.dtype)):
        return None
    sig = acc(acc, x, v)

    def codegen(context, builder, signature, args):
        vty, xty, _ = signature.args
        llvty = context.get_value_type(vty)
        xv = (
            args[1] if isinstance(xty, Vec8) else _splat(builder, llvty, context.cast(builder, args[1], xty, vty.dtype))
        )
        name = f"llvm.fmuladd.v{LANES}{'f32' if vty.dtype.bitwidth == 32 else 'f64'}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(llvty, [llvty, llvty, llvty]), name)
        return builder.call(fn, [xv, args[2], args[0]])

    return sig, codegen


@intrinsic
def vaddto8(typingctx, a, i, j, v):
    """``a[i, j : j + 8] += v`` with each lane converted to ``a``'s dtype first
    (``a`` a C-contiguous 2-D float array; e.g. float32 lanes into float64 sums)."""
    if not (_is_2d(a) and _float_array(a) and isinstance(v, Vec8)):
        return None
    sig = types.void(a, i, j, v)

    def codegen(context, builder, signature, args):
        aty, ity, jty, vty = signature.args
        ptr = _item_pointer(context, builder, aty, args[0], ity, args[1], jty, args[2])
        out_ty = context.get_value_type(Vec8(aty.dtype))
        vptr = builder.bitcast(ptr, out_ty.as_pointer())
        align = context.get_abi_sizeof(context.get_value_type(aty.dtype))
        v = args[3]
        if vty.dtype.bitwidth < aty.dtype.bitwidth:
            v = builder.fpext(v, out_ty)
        elif vty.dtype.bitwidth > aty.dtype.bitwidth:
            v = builder.fptrunc(v, out_ty)
        builder.store(builder.fadd(builder.load(vptr, align=align), v), vptr, align=align)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vadd8(typingctx, a, b):
    """``a + b`` lane by lane (two ``Vec8`` of one dtype)."""
    if not (isinstance(a, Vec8) and a == b):
        return None
    sig = a(a, b)

    def codegen(context, builder, signature, args):
        return builder.fadd(args[0], args[1])

    return sig, codegen


@intrinsic
def vsum8(typingctx, v):
    """The sum of the lanes, in the fixed order ``((v0+v1)+(v2+v3))+((v4+v5)+(v6+v7))``."""
    if not isinstance(v, Vec8):
        return None
    sig = v.dtype(v)

    def codegen(context, builder, signature, args):
        lanes = [builder.extract_element(args[0], ir.IntType(32)(k)) for k in range(LANES)]
        while len(lanes) > 1:
            lanes = [builder.fadd(lanes[k], lanes[k + 1]) for k in range(0, len(lanes), 2)]
        return lanes[0]

    return sig, codegen


@intrinsic
def vresidual8(typingctx, R, g, o0, T, i, b, gb):
    """Eight residuals of one row, in float64; returns their squares.

    For lanes ``o = o0 .. o0+7``: ``r = float64(R[g, o]) + b[o] − T[i, o]``
    (in that order, as the scalar code rounds it), then ``gb[o] += r`` and
    ``R[g, o] = r`` rounded to R's dtype.  ``R`` and ``T`` are C-contiguous
    2-D arrays of the data's dtype, ``b`` 1-D of that dtype, ``gb`` 1-D
    float64.  Returns the ``Vec8`` (float64) of ``r²``.
    """
    if not (
        _is_2d(R)
        and _is_2d(T)
        and isinstance(b, types.Array)
        and b.ndim == 1
        and isinstance(gb, types.Array)
        and gb.ndim == 1
    ):
        return None
    if not (R.dtype == T.dtype == b.dtype and isinstance(R.dtype, types.Float) and gb.dtype == types.float64):
        return None
    out = Vec8(types.float64)
    sig = out(R, g, o0, T, i, b, gb)

    def codegen(context, builder, signature, args):
        Rty, gty, oty, Tty, ity, bty, gbty = signature.args
        data = context.get_value_type(Vec8(Rty.dtype))
        f64 = context.get_value_type(out)
        align = context.get_abi_sizeof(context.get_value_type(Rty.dtype))

        def vec_ptr(aty, ary, idx_types, idx, vty):
            arr = context.make_array(aty)(context, builder, ary)
            idx = [context.cast(builder, v, t, types.intp) for v, t in zip(idx, idx_types)]
            ptr = cgutils.get_item_pointer(context, builder, aty, arr, idx, wraparound=False, boundscheck=False)
            return builder.bitcast(ptr, vty.as_pointer())

        def widen(v):
            return v if Rty.dtype.bitwidth == 64 else builder.fpext(v, f64)

        pR = vec_ptr(Rty, args[0], (gty, oty), (args[1], args[2]), data)
        pT = vec_ptr(Tty, args[3], (ity, oty), (args[4], args[2]), data)
        pb = vec_ptr(bty, args[5], (oty,), (args[2],), data)
        pgb = vec_ptr(gbty, args[6], (oty,), (args[2],), f64)
        y = widen(builder.load(pR, align=align))
        t = widen(builder.load(pT, align=align))
        bb = widen(builder.load(pb, align=align))
        r = builder.fsub(builder.fadd(y, bb), t)
        builder.store(builder.fadd(builder.load(pgb, align=8), r), pgb, align=8)
        builder.store(r if Rty.dtype.bitwidth == 64 else builder.fptrunc(r, data), pR, align=align)
        return builder.fmul(r, r)

    return sig, codegen


# --------------------------------------------------------------------------
# added for the Gram pass's shift (cpu_gram._fill32): a vector subtraction
# and a range test whose result stays a lane mask until one reduction
# --------------------------------------------------------------------------
@intrinsic
def vsub8(typingctx, a, b):
    """``a − b`` lane by lane (two ``Vec8`` of one dtype): one rounding, as
    the scalar subtraction."""
    if not (isinstance(a, Vec8) and a == b):
        return None
    sig = a(a, b)

    def codegen(context, builder, signature, args):
        return builder.fsub(args[0], args[1])

    return sig, codegen


MASK = Vec8(types.int32)


@intrinsic
def vmask8(typingctx, a):
    """A lane mask of no lanes (``Vec8`` of int32 zeros); ``a`` is any array
    (it only fixes the call's types, as in ``vzeros8``)."""
    if not isinstance(a, types.Array):
        return None
    sig = MASK(a)

    def codegen(context, builder, signature, args):
        return ir.Constant(context.get_value_type(MASK), None)

    return sig, codegen


@intrinsic
def voutside8(typingctx, mask, v, lo, hi):
    """``mask`` with the lanes set where ``v`` is nonzero and ``|v|`` is not in
    ``[lo, hi]`` (infinities and NaN included: a NaN fails both bounds).

    ``mask`` a lane mask (``vmask8``), ``v`` a float ``Vec8``, ``lo`` and
    ``hi`` scalars converted to ``v``'s dtype.  The mask stays a vector, so a
    loop of these needs no reduction until ``vany8``.
    """
    if not (mask == MASK and isinstance(v, Vec8) and isinstance(v.dtype, types.Float)):
        return None
    if not (isinstance(lo, types.Number) and isinstance(hi, types.Number)):
        return None
    sig = MASK(mask, v, lo, hi)

    def codegen(context, builder, signature, args):
        _, vty, loty, hity = signature.args
        llvty = context.get_value_type(vty)
        fabs = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(llvty, [llvty]),
            f"llvm.fabs.v{LANES}{'f32' if vty.dtype.bitwidth == 32 else 'f64'}",
        )
        a = builder.call(fabs, [args[1]])
        lo_v = _splat(builder, llvty, context.cast(builder, args[2], loty, vty.dtype))
        hi_v = _splat(builder, llvty, context.cast(builder, args[3], hity, vty.dtype))
        zero = ir.Constant(llvty, None)
        # not (a <= hi) -- true for NaN too; 0 < a < lo
        above = builder.fcmp_unordered(">", a, hi_v)
        tiny = builder.and_(builder.fcmp_ordered("<", a, lo_v), builder.fcmp_ordered(">", a, zero))
        out = builder.sext(builder.or_(above, tiny), context.get_value_type(MASK))
        return builder.or_(args[0], out)

    return sig, codegen


@intrinsic
def vany8(typingctx, mask):
    """Whether any lane of a lane mask is set."""
    if mask != MASK:
        return None
    sig = types.boolean(mask)

    def codegen(context, builder, signature, args):
        bits = builder.icmp_unsigned("!=", args[0], ir.Constant(context.get_value_type(MASK), None))
        packed = builder.bitcast(bits, ir.IntType(LANES))
        return builder.icmp_unsigned("!=", packed, ir.Constant(ir.IntType(LANES), 0))

    return sig, codegen


@intrinsic
def vload8_first(typingctx, a, i, j, count):
    """``a[i, j : j + count]`` (``count`` < 8) in the first lanes of a
    ``Vec8``, zeros in the others; nothing past them is read
    (``llvm.masked.load``: the end of a row, or of the array)."""
    if not (_is_2d(a) and _float_array(a) and isinstance(i, types.Integer) and isinstance(j, types.Integer)):
        return None
    if not isinstance(count, types.Integer):
        return None
    vty = Vec8(a.dtype)
    sig = vty(a, i, j, count)

    def codegen(context, builder, signature, args):
        aty, ity, jty, cty = signature.args
        ptr = _item_pointer(context, builder, aty, args[0], ity, args[1], jty, args[2])
        llvty = context.get_value_type(vty)
        vptr = builder.bitcast(ptr, llvty.as_pointer())
        i32 = ir.IntType(32)
        lanes = ir.Constant(ir.VectorType(i32, LANES), list(range(LANES)))
        n = builder.trunc(context.cast(builder, args[3], cty, types.int64), i32)
        nv = _splat(builder, ir.VectorType(i32, LANES), n)
        mask = builder.icmp_signed("<", lanes, nv)
        suffix = f"v{LANES}{'f32' if vty.dtype.bitwidth == 32 else 'f64'}.p0"
        fn = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(llvty, [llvty.as_pointer(), i32, mask.type, llvty]),
            f"llvm.masked.load.{suffix}",
        )
        align = context.get_abi_sizeof(context.get_value_type(aty.dtype))
        return builder.call(fn, [vptr, i32(align), mask, ir.Constant(llvty, None)])

    return sig, codegen
