"""The machine's limits, measured without BLAS: the float32 FMA peak (a Numba micro-benchmark of
independent multiply-add chains), the memory bandwidth, the CPU's vector instruction set, and
whether BLAS runs kernels below that instruction set.

Every "fraction of peak" fastcnn-bench reports is against :func:`measure_fma_peak`'s all-thread
figure; the ``numpy.matmul`` rate (:func:`fastcnn.benchmarks.measurement.measure_matmul`) is only
a second yardstick, since BLAS may be set up below the machine (``OPENBLAS_CORETYPE``).
"""
from __future__ import annotations

import os
import re
import time

import numpy as np

from fastcnn.cpumeter import CpuMeter
from fastcnn.testing import LONG_FLOAT32

CHAINS = 12          # independent accumulators: more than FMA latency x FMA ports on current x86 cores
DEPTH = 8            # multiply-adds per chain and per loaded value in the loop formulation
SLP_CHAINS = 10      # the SLP formulation's vector accumulators: with a and b, 12 of AVX2's 16 registers
LOOP_LENGTH = 512    # elements per chain and thread in the loop formulation (24 KiB: stays in L1)

# Vector width in bits of the kernels OpenBLAS picks per core type (threadpoolctl's "architecture").
BLAS_CORE_BITS = {"skylakex": 512, "cooperlake": 512, "sapphirerapids": 512, "zen5": 512, "neoversev1": 256,
                  "haswell": 256, "zen": 256, "sandybridge": 256, "excavator": 256, "steamroller": 256,
                  "piledriver": 256, "bulldozer": 256, "nehalem": 128, "core2": 128, "prescott": 128,
                  "atom": 128, "barcelona": 128}


# ------------------------------------------------------------------------------ CPU and BLAS

def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_vector_bits(flags: set[str]) -> int | None:
    """Widest float32 FMA vector the CPU has: 512 (AVX-512F), 256 (AVX2 + FMA), 128, or None."""
    if not flags:
        return None
    if "avx512f" in flags:
        return 512
    if "avx2" in flags and "fma" in flags:
        return 256
    return 128


def cpu_mhz() -> float | None:
    """The clock /proc/cpuinfo reports (the nominal one under most hypervisors; turbo may be higher)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("cpu mhz"):
                    return float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def plausibility(one_thread_gflops: float, vector_bits: int | None, mhz: float | None) -> dict:
    """The one-thread peak per cycle at the reported clock, next to what two FMA pipes of the emitted
    vector width give (2 pipes x lanes x 2 FLOPs): a figure far above it means the clock reading is
    low (turbo), far below it that the kernel or the machine is not at its peak."""
    lanes = (vector_bits or 32) // 32
    out = {"mhz": mhz, "two_pipe_flops_per_cycle": 2 * lanes * 2, "flops_per_cycle": None}
    if mhz:
        out["flops_per_cycle"] = one_thread_gflops * 1e3 / mhz
    return out


def isa_name(bits: int | None) -> str:
    return {512: "AVX-512", 256: "AVX2/FMA", 128: "SSE"}.get(bits, "unknown")


def blas_check(blas: list[dict], cpu_bits: int | None, environ=os.environ) -> dict:
    """BLAS's core type and vector width against the CPU's; ``below_cpu`` is true when BLAS runs
    narrower kernels than the CPU has, and ``message`` says so plainly (None otherwise)."""
    out = {"core_type": None, "bits": None, "below_cpu": False, "message": None,
           "openblas_coretype_env": environ.get("OPENBLAS_CORETYPE")}
    for lib in blas:
        core = lib.get("architecture")
        if not core:
            continue
        bits = BLAS_CORE_BITS.get(str(core).lower())
        out.update(core_type=core, bits=bits)
        if bits and cpu_bits and bits < cpu_bits:
            forced = out["openblas_coretype_env"]
            why = (f"OPENBLAS_CORETYPE={forced} is set in the environment" if forced
                   else "OpenBLAS picked this core type")
            out["below_cpu"] = True
            out["message"] = (f"BLAS runs below this CPU: {lib.get('internal_api')} uses its {core} kernels "
                              f"({isa_name(bits)}, {bits}-bit) on an {isa_name(cpu_bits)} CPU ({why}); "
                              f"numpy.matmul is then not the machine's limit")
        break
    return out


# ------------------------------------------------------------------------------ the FMA peak

def _loop_source() -> str:
    """CHAINS arrays, each element carried through DEPTH multiply-adds per pass: the loop over
    elements is the innermost loop, so LLVM's loop vectoriser turns every line into one vector FMA
    at the widest width it emits for this CPU, with CHAINS independent dependency chains."""
    lines = ["def chains(s, a, b, reps):", "    for _ in range(reps):", "        for i in range(s.shape[1]):"]
    lines += [f"            v{c} = s[{c}, i]" for c in range(CHAINS)]
    lines += [f"            v{c} = v{c} * a + b" for _ in range(DEPTH) for c in range(CHAINS)]
    lines += [f"            s[{c}, i] = v{c}" for c in range(CHAINS)]
    return "\n".join(lines)


def _slp_source(n: int) -> str:
    """n named scalars loaded from and stored to consecutive elements: LLVM's SLP vectoriser packs
    each run of one register's lanes into that register, so n = SLP_CHAINS x lanes keeps SLP_CHAINS
    independent chains in registers. More than the register file holds (16 lanes per chain on an
    AVX2 CPU: 20 ymm accumulators) spills every pass to the stack and measures the spills, not the
    FMA units."""
    lines = ["def chains(s, a, b, reps):"] + [f"    v{j} = s[{j}]" for j in range(n)]
    lines += ["    for _ in range(reps):"] + [f"        v{j} = v{j} * a + b" for j in range(n)]
    lines += [f"    s[{j}] = v{j}" for j in range(n)]
    return "\n".join(lines)


FORMULATIONS = ("loop", "slp")


def formulation(name: str, lanes: int) -> tuple[str, int, tuple[int, ...], bool]:
    """(source, FMAs per pass and per state array, state shape per thread, SLP needed) of one
    formulation for a CPU whose widest float32 vector has ``lanes`` lanes."""
    if name == "loop":
        return _loop_source(), CHAINS * DEPTH * LOOP_LENGTH, (CHAINS, LOOP_LENGTH), False
    n = SLP_CHAINS * lanes
    return _slp_source(n), n, (n,), True


def cpu_lanes() -> int:
    """float32 lanes of this CPU's widest FMA vector, from /proc/cpuinfo or, where there is none,
    LLVM's view of the host CPU."""
    flags = cpu_flags()
    if not flags:
        import llvmlite.binding as llvm  # lazy: only where /proc/cpuinfo is missing
        flags = {name for name, on in llvm.get_host_cpu_features().items() if on}
    return (cpu_vector_bits(flags) or 512) // 32


class PeakKernel:
    """One formulation of the FMA micro-benchmark, compiled (never cached: the on-disk cache key
    ignores the SLP setting) into a one-thread and an all-thread (prange over threads) function."""

    def __init__(self, name: str, lanes: int | None = None):
        import numba  # lazy: importing fastcnn.benchmarks must not start Numba
        from numba import njit, prange

        import fastcnn.kernels._config  # noqa: F401 - Numba's CPU target built as the kernels compile (vector width)

        source, self.fmas_per_pass, self.state_shape, slp = formulation(name, lanes or cpu_lanes())
        self.name = name
        namespace: dict = {}
        exec(source, namespace)      # noqa: S102 - source generated above, no outside input
        old = numba.core.config.SLP_VECTORIZE
        numba.core.config.SLP_VECTORIZE = slp            # read at compile time only; restored below
        try:
            self.one = njit(fastmath={"contract"})(namespace["chains"])

            one = self.one

            def many(state, a, b, reps):
                for t in prange(state.shape[0]):
                    one(state[t], a, b, reps)
            self.many = njit(parallel=True, fastmath={"contract"})(many)
            probe = np.ones((1, *self.state_shape), np.float32)
            self.one(probe[0], np.float32(1), np.float32(0), 1)
            self.many(probe, np.float32(1), np.float32(0), 1)
        finally:
            numba.core.config.SLP_VECTORIZE = old
        asm = next(iter(self.one.inspect_asm().values()))
        self.fma_counts, self.spills = fma_counts(asm), fma_loop_spills(asm)

    @property
    def vector_bits(self) -> int | None:
        """Widest packed float32 FMA in the compiled one-thread kernel."""
        for bits, reg in ((512, "zmm"), (256, "ymm"), (128, "xmm")):
            if self.fma_counts.get(reg):
                return bits
        return None

    def run(self, threads: int, reps: int) -> tuple[float, float, dict]:
        """(seconds, FLOPs, CPU meter) of one call on ``threads`` threads (1: the plain function),
        after checking the multiply-adds were all done: from 2, ``v = 0.99 v + 0.01`` applied n times
        gives 1 + 0.99**n (a contracting map: rounding errors shrink instead of adding up)."""
        n = reps * (DEPTH if self.name == "loop" else 1)
        a, b = np.float32(0.99), np.float32(0.01)
        state = np.full((threads, *self.state_shape), 2.0, np.float32)
        with CpuMeter() as meter:
            t0 = time.perf_counter()
            if threads == 1:
                self.one(state[0], a, b, reps)
            else:
                self.many(state, a, b, reps)
            seconds = time.perf_counter() - t0
        fixed = float(b) / (1.0 - float(a))
        want = fixed + (2.0 - fixed) * float(a) ** n
        if not np.allclose(state, want, rtol=LONG_FLOAT32["rtol"], atol=0.0):
            raise AssertionError(f"the FMA peak kernel ({self.name}) computed {state.min():.6g}..{state.max():.6g} "
                                 f"after {n} multiply-adds, expected {want:.6g}: it skipped or altered work")
        return seconds, 2.0 * self.fmas_per_pass * threads * reps, meter.summary(threads)


def fma_counts(asm: str) -> dict:
    """Packed float32 FMA instructions in ``asm`` per register width (AT&T or Intel syntax)."""
    return {reg: len(re.findall(r"vfn?m(?:add|sub)\d{3}ps\s[^\n]*\b%?" + reg, asm))
            for reg in ("zmm", "ymm", "xmm")}


def fma_loop_spills(asm: str) -> int:
    """Vector register moves to or from the stack in the basic blocks of ``asm`` (AT&T syntax) that
    hold packed FMAs: 0 when the chains stay in registers, as a peak kernel must."""
    spills = 0
    for block in re.split(r"\n\.?L\w+:", asm):
        if re.search(r"vfn?m(?:add|sub)\d{3}ps", block):
            spills += len(re.findall(r"^\s*vmov\w*\s[^\n]*(?:%[xyz]mm[^\n]*\(%rsp\)|\(%rsp\)[^\n]*%[xyz]mm)",
                                     block, re.M))
    return spills


def _best_rate(kernel: PeakKernel, threads: int, min_time: float, repeats: int) -> dict:
    reps = 4                                             # n = 4..64 multiply-adds: the check is sharp here
    while True:                                          # calibrate: one call of about min_time / repeats
        seconds, _, _ = kernel.run(threads, reps)
        if seconds >= min_time / repeats / 2 or reps > 1 << 26:
            break
        reps *= 2
    best = None
    for _ in range(repeats):
        seconds, flops, meter = kernel.run(threads, reps)
        rate = flops / seconds / 1e9
        if best is None or rate > best["gflops"]:
            best = {"gflops": rate, "seconds": seconds, "reps": reps, **meter}
    return best


def measure_fma_peak(threads: int, *, min_time: float = 0.5, repeats: int = 5) -> dict:
    """The float32 FMA peak of one thread and of ``threads`` threads, in GFLOP/s: the best of both
    formulations (loop vectoriser, SLP vectoriser) and of ``repeats`` calls each. Also the vector
    width LLVM emitted for each formulation and its FMA count, from ``inspect_asm``."""
    import numba
    before = numba.get_num_threads()
    out = {"formulations": {}, "threads": threads}
    try:
        numba.set_num_threads(threads)
        for name in FORMULATIONS:
            kernel = PeakKernel(name)
            one = _best_rate(kernel, 1, min_time, repeats)
            many = _best_rate(kernel, threads, min_time, repeats) if threads > 1 else one
            out["formulations"][name] = {"vector_bits": kernel.vector_bits, "fma_instructions": kernel.fma_counts,
                                         "stack_spills": kernel.spills,
                                         "one_thread": one, "all_threads": many}
    finally:
        numba.set_num_threads(before)
    forms = out["formulations"]
    best_one = max(forms, key=lambda k: forms[k]["one_thread"]["gflops"])
    best_all = max(forms, key=lambda k: forms[k]["all_threads"]["gflops"])
    out.update(one_thread_gflops=forms[best_one]["one_thread"]["gflops"], one_thread=forms[best_one]["one_thread"],
               gflops=forms[best_all]["all_threads"]["gflops"], formulation=best_all,
               vector_bits=forms[best_all]["vector_bits"],
               cpu_seconds_per_second=forms[best_all]["all_threads"]["cpu_seconds_per_second"],
               other_load=forms[best_all]["all_threads"]["other_load"],
               contended=forms[best_all]["all_threads"]["contended"])
    out["scaling"] = out["gflops"] / (threads * out["one_thread_gflops"])
    return out


def peak_check(peak: dict, cpu_bits: int | None) -> list[str]:
    """Plain statements about the peak figure a reader must know before trusting any fraction."""
    notes = []
    threads = peak["threads"]
    if threads > 1 and peak["scaling"] < 0.7 and peak.get("contended", True):
        notes.append(f"the {threads}-thread FMA peak is only {peak['scaling']:.0%} of {threads} x the one-thread "
                     "peak: other programs took cores while it was measured, so every fraction of peak "
                     "below is too high; run again on a quiet machine")
    elif threads > 1 and peak["scaling"] < 0.7:    # quiet cores: the hardware, not contention
        notes.append(f"the {threads}-thread FMA peak is {peak['scaling']:.0%} of {threads} x the one-thread peak "
                     "with no other program on the cores: these threads share FMA units (virtual CPUs that are "
                     "SMT siblings) or the clock drops with every core busy; the fractions below are against "
                     f"the {threads}-thread figure, what these threads can reach")
    if cpu_bits and peak["vector_bits"] and peak["vector_bits"] < cpu_bits:
        notes.append(f"LLVM emitted {peak['vector_bits']}-bit FMAs on this {isa_name(cpu_bits)} CPU (its tuning "
                     "for this CPU prefers narrower vectors, and fastcnn did not widen them: FASTCNN_WIDE_VECTORS=0, "
                     "NUMBA_CPU_FEATURES set, or Numba compiled before fastcnn.kernels was imported): the measured "
                     f"peak is the {peak['vector_bits']}-bit one, and the hardware's may be about twice that")
    return notes


# ------------------------------------------------------------------------------ memory bandwidth

def measure_bandwidth(threads: int, *, megabytes: int = 192, repeats: int = 5) -> dict:
    """Best GB/s of a Numba triad ``c = a + s*b`` over three float32 arrays of ``megabytes`` in
    all (read two, write one), on ``threads`` threads."""
    import numba
    from numba import njit, prange

    @njit(parallel=True)
    def triad(a, b, c, s):
        for i in prange(a.size):
            c[i] = a[i] + s * b[i]

    n = max(1 << 16, megabytes * (1 << 20) // 12)
    a, b, c = np.ones(n, np.float32), np.full(n, 2.0, np.float32), np.empty(n, np.float32)
    before = numba.get_num_threads()
    best = None
    try:
        numba.set_num_threads(threads)
        triad(a, b, c, np.float32(0.5))
        for _ in range(repeats):
            with CpuMeter() as meter:
                t0 = time.perf_counter()
                triad(a, b, c, np.float32(0.5))
                seconds = time.perf_counter() - t0
            if best is None or seconds < best["seconds"]:
                best = {"seconds": seconds, **meter.summary(threads)}
    finally:
        numba.set_num_threads(before)
    if not np.all(c == 2.0):
        raise AssertionError("the bandwidth triad computed wrong values")
    best["gbytes_per_s"] = 12 * n / best["seconds"] / 1e9
    best["bytes"] = 12 * n
    return best


def allowed_fraction(intensity: float, peak_gflops: float, gbytes_per_s: float) -> float:
    """The fraction of the FMA peak an op of ``intensity`` FLOPs per byte can reach at the measured
    bandwidth: min(1, intensity x bandwidth / peak) (the roofline)."""
    if intensity <= 0 or peak_gflops <= 0:
        return 0.0
    return min(1.0, intensity * gbytes_per_s / peak_gflops)
