"""The register tile of the convolution kernels (BLIS's micro-kernel), written as LLVM vector code.

tile(fa, astarts, aoffs, fb, bstarts, boff, C, i0, j0, load) does, for i < MR and j < NR:

    acc = C[i0 + i, j0 + j] if load else 0
    for l in range(len(astarts)):
        acc += fa[astarts[l] + aoffs[i]] * fb[bstarts[l] + boff + j]     # one fused multiply-add
    C[i0 + i, j0 + j] = acc

Per step l it broadcasts MR values of A and multiplies them with NR contiguous values of B into MR
accumulator vectors of NR lanes, which stay in registers for the whole loop. Both operands are
addressed through start tables, so either can be a packed panel (astarts[l] = l*MR, aoffs =
0..MR-1) or pixels and windows of an image buffer read in place. fa, fb and C must be
C-contiguous; the tables may be any integer arrays. The vector code checks no bounds: under
NUMBA_BOUNDSCHECK=1 (a CI run) register_tile gives the loop above as an ordinary Numba function
instead, so that run checks every address the drivers compute.

Why LLVM IR and not a Numba loop: the accumulators must be MR x NR named values for LLVM to keep
them in registers (a loop over a local array leaves them in memory). Written as Python scalars
(MR * NR of them, 192 for 6 x 32) they cost Numba's front end 2.5-4 s to compile and needed its
SLP vectoriser to be packed back into vectors; as MR vectors of NR lanes built here (a Numba
intrinsic) the tile compiles in about 0.2 s and needs no vectoriser. ``llvm.fmuladd`` is the
``contract`` fast-math flag: fused where the CPU has FMA, each accumulator summed in order of l.
The NumPy reference and tests/test_kernels.py::test_register_tile_* check it on every shape.

Shapes. MR = 3 for CPUs with 16 vector registers (AVX2): 12 accumulators + 3 broadcasts + one B
vector at a time; each step does 12 vector FMAs for 3 broadcasts and 4 loads of B. Measured with
the earlier tile of named scalars (the same operations) in the forward's driver with the data in
L1 (one core, interleaved): 3 x 32 at 94 % of the FMA peak,
5 x 16 at 83 %, 2 x 32 84 %, 4 x 16 73 %; 6 x 16 and 4 x 24 spill (65 %, 45 %). MR = 6 for CPUs
with 32 (AVX-512): 12 zmm accumulators, enough to cover two FMA pipes' latency, where 3 x 32
keeps only 6. On a 16-core Xeon (Emerald Rapids), conv2 at 2 threads, forward / weight gradient /
input gradient: 6 x 32 with 512-bit vectors 3.1-3.4 / 2.9-3.4 / 2.7-3.0 ms against 5.1-5.3 /
5.1-5.2 / 5.7-7.0 ms for 3 x 32 with LLVM's default 256-bit vectors. kernels/_config.py chooses
MR for the CPU (TILE_ROWS). tile_narrow (5 x 16) serves layers whose last 32-wide panel of output
channels would be half or more padding (K <= 16, 33..48, ...). The tile's vectors are 512 bits
wide whenever MR is 6, whatever LLVM's tuning prefers for the vectors it makes itself
(FASTCNN_WIDE_VECTORS and prefer_wide_vectors in kernels/_config.py govern those).
"""
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core import config as _numba_config
from numba.core.errors import TypingError
from numba.extending import intrinsic

from fastcnn.kernels._config import TILE_ROWS

NR = 32
MR = TILE_ROWS
MR_NARROW, NR_NARROW = 5, 16
VECTOR_BYTES = 64 if TILE_ROWS == 6 else 32     # the 6-row tile is AVX-512's: 512-bit registers


def register_tile(mr: int, nr: int):
    """The tile with ``mr`` rows and ``nr`` columns, callable from Numba-compiled code: vector_tile,
    or under NUMBA_BOUNDSCHECK=1 loop_tile, whose every access is checked."""
    return loop_tile(mr, nr) if _numba_config.BOUNDSCHECK else vector_tile(mr, nr)


# ---------------------------------------------------------------- pieces the three tiles share

def _check_operands(tile, like, floats=(), tables=(), integers=(), load=None):
    """TypingError unless each of ``floats`` ((name, type, ndim)) is a C-contiguous float array of
    the dtype of ``like`` ((name, type)), each of ``tables`` ((name, type)) a 1-d integer array,
    each of ``integers`` an integer and ``load`` (if given) a bool."""
    like_name, like_type = like
    for name, t, ndim in floats:
        if not (isinstance(t, types.Array) and t.ndim == ndim and t.layout == "C"
                and t.dtype in (types.float32, types.float64) and t.dtype == like_type.dtype):
            raise TypingError(f"{tile}: {name} must be a C-contiguous {ndim}-d float array of {like_name}'s dtype, "
                              f"got {t}")
    for name, t in tables:
        if not (isinstance(t, types.Array) and t.ndim == 1 and isinstance(t.dtype, types.Integer)):
            raise TypingError(f"{tile}: {name} must be a 1-d integer array, got {t}")
    for name, t in integers:
        if not isinstance(t, types.Integer):
            raise TypingError(f"{tile}: {name} must be an integer, got {t}")
    if load is not None and not isinstance(load, types.Boolean):
        raise TypingError(f"{tile}: load must be a bool, got {load}")


class _Emit:
    """One codegen call's helpers: its operands (arrays as structs, integers as int64), element
    addresses, vectors of ``w`` lanes (the CPU's width, at most ``max_lanes``), the fused
    multiply-add and the broadcast."""

    def __init__(self, context, builder, sig, args, elem_type, max_lanes=None):
        self.context, self.builder, self.types = context, builder, sig.args
        self.values = [context.make_array(ty)(context, builder, v) if isinstance(ty, types.Array) else v
                       for ty, v in zip(sig.args, args)]
        self.args = args
        self.i64 = ir.IntType(64)
        self.elem = context.get_data_type(elem_type)
        self.align = context.get_abi_sizeof(self.elem)          # rows and windows: element-aligned
        self.w = min(max_lanes or VECTOR_BYTES, VECTOR_BYTES // self.align)
        self.part = ir.VectorType(self.elem, self.w)
        self.fmuladd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(self.part, [self.part] * 3),
                                                      f"llvm.fmuladd.v{self.w}f{8 * self.align}")
        self._undef = ir.Constant(self.part, ir.Undefined)
        self._lanes0 = ir.Constant(ir.VectorType(ir.IntType(32), self.w), [0] * self.w)

    def const(self, v):
        return ir.Constant(self.i64, v)

    def int64(self, k):
        """Argument k, an integer, as int64."""
        return self.context.cast(self.builder, self.args[k], self.types[k], types.int64)

    def item_ptr(self, k, *inds):
        """The address of argument k's element at ``inds``."""
        arr, ty = self.values[k], self.types[k]
        return cgutils.get_item_pointer2(self.context, self.builder, arr.data,
                                         cgutils.unpack_tuple(self.builder, arr.shape),
                                         cgutils.unpack_tuple(self.builder, arr.strides), ty.layout, list(inds))

    def index(self, k, i):
        """Element i of argument k, an integer table, as int64."""
        return self.context.cast(self.builder, self.builder.load(self.item_ptr(k, i)), self.types[k].dtype,
                                 types.int64)

    def length(self, k):
        return cgutils.unpack_tuple(self.builder, self.values[k].shape)[0]

    def vector_ptr(self, k, at):
        """A vector pointer into argument k, a flat array, at element ``at``."""
        return self.builder.bitcast(self.builder.gep(self.values[k].data, [at]), self.part.as_pointer())

    def broadcast(self, x):
        return self.builder.shuffle_vector(self.builder.insert_element(self._undef, x, ir.Constant(ir.IntType(32), 0)),
                                           self._undef, self._lanes0)

    def accumulators(self, rows, vectors, load):
        """Per row of C (``rows``: element pointers), ``vectors`` accumulators in allocas (LLVM keeps
        them in registers), loaded from the row if ``load`` else zero; returns them and the rows as
        vector pointers."""
        b = self.builder
        acc = [[cgutils.alloca_once(b, self.part) for _ in range(vectors)] for _ in rows]
        rows = [[b.bitcast(b.gep(row, [self.const(q * self.w)]), self.part.as_pointer()) for q in range(vectors)]
                for row in rows]
        with b.if_else(load) as (then, otherwise):
            with then:
                for a_i, row in zip(acc, rows):
                    for a, r in zip(a_i, row):
                        b.store(b.load(r, align=self.align), a)
            with otherwise:
                for a_i in acc:
                    for a in a_i:
                        b.store(ir.Constant(self.part, None), a)
        return acc, rows

    def store_rows(self, acc, rows):
        for a_i, row in zip(acc, rows):
            for a, r in zip(a_i, row):
                self.builder.store(self.builder.load(a), r, align=self.align)


# ---------------------------------------------------------------- the convolutions' tile

def vector_tile(mr: int, nr: int):
    """The tile as LLVM vector code (a Numba intrinsic)."""

    @intrinsic
    def tile(typingctx, fa, astarts, aoffs, fb, bstarts, boff, C, i0, j0, load):
        _check_operands("tile", ("C", C), floats=(("fa", fa, 1), ("fb", fb, 1), ("C", C, 2)),
                        tables=(("astarts", astarts), ("aoffs", aoffs), ("bstarts", bstarts)),
                        integers=(("boff", boff), ("i0", i0), ("j0", j0)), load=load)
        lanes = VECTOR_BYTES * 8 // C.dtype.bitwidth
        if nr > lanes and nr % lanes:
            raise TypingError(f"tile: {nr} columns are not a whole number of {lanes}-lane vectors")
        return types.none(fa, astarts, aoffs, fb, bstarts, boff, C, i0, j0, load), _codegen(mr, nr)

    return tile


def _codegen(mr: int, nr: int):
    def codegen(context, builder, sig, args):
        e = _Emit(context, builder, sig, args, sig.args[6].dtype, max_lanes=nr)
        fa, load = e.values[0], e.values[9]
        boff, i0, j0 = e.int64(5), e.int64(7), e.int64(8)
        offs = [e.index(2, e.const(i)) for i in range(mr)]
        # Each row's NR lanes as vectors of the CPU's width, B loaded one such vector at a time and
        # used by every row at once: LLVM keeps this order, so MR * NR / lanes accumulators, MR
        # broadcasts and one B vector are live (3 x 32 on AVX2: 12 + 3 + 1 = 16 registers).
        acc, rows = e.accumulators([e.item_ptr(6, builder.add(i0, e.const(i)), j0) for i in range(mr)], nr // e.w,
                                   load)
        with cgutils.for_range(builder, e.length(1)) as loop:
            sa = e.index(1, loop.index)
            sb = builder.add(e.index(4, loop.index), boff)
            xs = [e.broadcast(builder.load(builder.gep(fa.data, [builder.add(sa, off)]))) for off in offs]
            for q in range(nr // e.w):
                b = builder.load(e.vector_ptr(3, builder.add(sb, e.const(q * e.w))), align=e.align)
                for x, a_i in zip(xs, acc):
                    builder.store(builder.call(e.fmuladd, [x, b, builder.load(a_i[q])]), a_i[q])
        e.store_rows(acc, rows)
        return context.get_dummy_value()

    return codegen


def register_row_tile(mr: int, vectors: int):
    """row_tile with ``mr`` rows of ``vectors`` register-wide vectors each (its width in elements,
    row_tile_width, depends on the dtype), callable from Numba-compiled code: LLVM vector code, or
    under NUMBA_BOUNDSCHECK=1 a checked loop."""
    return loop_row_tile(mr, vectors) if _numba_config.BOUNDSCHECK else vector_row_tile(mr, vectors)


def row_tile_width(vectors: int, itemsize: int) -> int:
    """The columns of a row tile of ``vectors`` vectors per row for elements of ``itemsize`` bytes."""
    return vectors * VECTOR_BYTES // itemsize


def vector_row_tile(mr: int, vectors: int):
    """row_tile(g, fb, bstarts, boffs, boff, C, i0, j0, load) does, for i < mr and j < nr (nr =
    row_tile_width(vectors, itemsize)):

        acc = C[i0 + i, j0 + j] if load else 0
        for l in range(len(bstarts)):
            acc += g[l] * fb[bstarts[l] + boff + boffs[i] + j]     # one fused multiply-add
        C[i0 + i, j0 + j] = acc

    The tile's transpose in what is shared: one scalar g[l] per step, broadcast to every row, and
    each row its own B vectors (a sum of scaled rows, whose starts come from a table: a sparse
    matrix times a dense one, row by row). mr * vectors accumulators stay in registers."""

    @intrinsic
    def row_tile(typingctx, g, fb, bstarts, boffs, boff, C, i0, j0, load):
        _check_operands("row_tile", ("C", C), floats=(("g", g, 1), ("fb", fb, 1), ("C", C, 2)),
                        tables=(("bstarts", bstarts), ("boffs", boffs)),
                        integers=(("boff", boff), ("i0", i0), ("j0", j0)), load=load)
        return types.none(g, fb, bstarts, boffs, boff, C, i0, j0, load), _row_codegen(mr, vectors)

    return row_tile


def _row_codegen(mr: int, vectors: int):
    def codegen(context, builder, sig, args):
        e = _Emit(context, builder, sig, args, sig.args[5].dtype)
        g, load = e.values[0], e.values[8]
        boff, i0, j0 = e.int64(4), e.int64(6), e.int64(7)
        offs = [builder.add(boff, e.index(3, e.const(i))) for i in range(mr)]
        acc, rows = e.accumulators([e.item_ptr(5, builder.add(i0, e.const(i)), j0) for i in range(mr)], vectors,
                                   load)
        with cgutils.for_range(builder, e.length(2)) as loop:
            x = e.broadcast(builder.load(builder.gep(g.data, [loop.index])))
            sb = e.index(2, loop.index)
            for off, a_i in zip(offs, acc):
                base = builder.add(sb, off)
                for q in range(vectors):
                    b = builder.load(e.vector_ptr(1, builder.add(base, e.const(q * e.w))), align=e.align)
                    builder.store(builder.call(e.fmuladd, [x, b, builder.load(a_i[q])]), a_i[q])
        e.store_rows(acc, rows)
        return context.get_dummy_value()

    return codegen


def register_scatter_tile(mr: int, vectors: int):
    """scatter_tile with ``mr`` rows of ``vectors`` register-wide vectors: LLVM vector code, or under
    NUMBA_BOUNDSCHECK=1 a checked loop."""
    return loop_scatter_tile(mr, vectors) if _numba_config.BOUNDSCHECK else vector_scatter_tile(mr, vectors)


def vector_scatter_tile(mr: int, vectors: int):
    """scatter_tile(g, starts, doff, drows, D, fb, boff, brows) does, for i < mr and j < nr (nr =
    row_tile_width(vectors, itemsize)), with B[i, j] = fb[boff + brows[i] + j] loaded once:

        for l in range(len(starts)):
            D[starts[l] + doff + drows[i] + j] += g[l] * B[i, j]          # one fused multiply-add

    row_tile's transpose: B stays in registers and each step reads and writes mr rows of D (a
    scaled copy of one small matrix added at many places)."""

    @intrinsic
    def scatter_tile(typingctx, g, starts, doff, drows, D, fb, boff, brows):
        _check_operands("scatter_tile", ("D", D), floats=(("g", g, 1), ("D", D, 1), ("fb", fb, 1)),
                        tables=(("starts", starts), ("drows", drows), ("brows", brows)),
                        integers=(("doff", doff), ("boff", boff)))
        return types.none(g, starts, doff, drows, D, fb, boff, brows), _scatter_codegen(mr, vectors)

    return scatter_tile


def _scatter_codegen(mr: int, vectors: int):
    def codegen(context, builder, sig, args):
        e = _Emit(context, builder, sig, args, sig.args[4].dtype)
        g = e.values[0]
        doff, boff = e.int64(2), e.int64(6)
        douts = [builder.add(doff, e.index(3, e.const(i))) for i in range(mr)]
        bvals = []
        for i in range(mr):
            row = builder.add(boff, e.index(7, e.const(i)))
            bvals.append([builder.load(e.vector_ptr(5, builder.add(row, e.const(q * e.w))), align=e.align)
                          for q in range(vectors)])
        with cgutils.for_range(builder, e.length(1)) as loop:
            x = e.broadcast(builder.load(builder.gep(g.data, [loop.index])))
            s0 = e.index(1, loop.index)
            for dr, b_i in zip(douts, bvals):
                base = builder.add(s0, dr)
                for q, b in enumerate(b_i):
                    ptr = e.vector_ptr(4, builder.add(base, e.const(q * e.w)))
                    builder.store(builder.call(e.fmuladd, [x, b, builder.load(ptr, align=e.align)]), ptr, align=e.align)
        return context.get_dummy_value()

    return codegen


def loop_scatter_tile(mr: int, vectors: int):
    """vector_scatter_tile as a plain loop (a Numba function): every access checked under
    NUMBA_BOUNDSCHECK=1."""

    @njit(fastmath={"contract"})
    def scatter_tile(g, starts, doff, drows, D, fb, boff, brows):
        nr = vectors * VECTOR_BYTES // D.itemsize
        for l in range(starts.shape[0]):
            for i in range(mr):
                for j in range(nr):
                    D[starts[l] + doff + drows[i] + j] += g[l] * fb[boff + brows[i] + j]
    return scatter_tile


def loop_row_tile(mr: int, vectors: int):
    """vector_row_tile as a plain loop (a Numba function): every access checked under NUMBA_BOUNDSCHECK=1."""

    @njit(fastmath={"contract"})
    def row_tile(g, fb, bstarts, boffs, boff, C, i0, j0, load):
        nr = vectors * VECTOR_BYTES // C.itemsize
        for i in range(mr):
            for j in range(nr):
                acc = C[i0 + i, j0 + j] if load else C.dtype.type(0)
                for l in range(bstarts.shape[0]):
                    acc += g[l] * fb[bstarts[l] + boff + boffs[i] + j]
                C[i0 + i, j0 + j] = acc
    return row_tile


def loop_tile(mr: int, nr: int):
    """The tile as the plain loop of the module docstring (a Numba function)."""

    @njit(fastmath={"contract"})
    def tile(fa, astarts, aoffs, fb, bstarts, boff, C, i0, j0, load):
        for i in range(mr):
            for j in range(nr):
                acc = C[i0 + i, j0 + j] if load else C.dtype.type(0)
                for l in range(astarts.shape[0]):
                    acc += fa[astarts[l] + aoffs[i]] * fb[bstarts[l] + boff + j]
                C[i0 + i, j0 + j] = acc
    return tile


tile = register_tile(MR, NR)
tile_narrow = register_tile(MR_NARROW, NR_NARROW)
# The sparse backward's row tile (kernels/conv_pooled.py): 3 rows (a kernel's rows of taps) of 6
# register-wide vectors (18 accumulators of AVX-512's 32 registers) or 4 (12 of AVX2's 16).
ROW_MR = 3
ROW_VECTORS = 6 if TILE_ROWS == 6 else 4
row_tile = register_row_tile(ROW_MR, ROW_VECTORS)
scatter_tile = register_scatter_tile(ROW_MR, ROW_VECTORS)
