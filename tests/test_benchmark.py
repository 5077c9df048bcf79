"""fastcnn.benchmarks: work counts by hand, shapes derived from the model, op cases and their checks,
the FMA peak kernel and its self-check, BLAS-versus-CPU statements, contention marks, and the
fastcnn-bench command end to end in quick mode on real MNIST (with --compare torch where PyTorch is
installed)."""
from __future__ import annotations

import json
import sys

import numba
import numpy as np
import pytest

from fastcnn import cpumeter, kernels, reference
from fastcnn.benchmarks import cli, measurement, report, roofline
from fastcnn.benchmarks import workload as fw
from fastcnn.benchmarks.charts import CHARTS
from fastcnn.convmath import conv_flops
from fastcnn.model import mnist_cnn


def test_conv_flops_by_hand():
    # N=2, C=3, 5x5 input, K=4 filters of 3x3, no padding: P = Q = 3;
    # each of the 2*4*3*3 = 72 outputs takes 3*3*3 = 27 multiply-adds = 54 FLOPs -> 3888.
    assert conv_flops(2, 3, 5, 5, 4, 3, 3) == 2 * 4 * 3 * 3 * 27 * 2 == 3888
    assert conv_flops(2, 3, 5, 5, 4, 3, 3, padding=1) == 2 * 4 * 5 * 5 * 27 * 2     # P = Q = 5
    assert conv_flops(2, 3, 5, 5, 4, 3, 3, stride=2, padding=1) == 3888             # P = Q = 3


def test_pool_bytes_by_hand():
    # 1x1x4x4 float32 -> 2x2: read 16*4 bytes, write 4*4 (y) + 4*4 (int32 argmax).
    assert fw.pool_forward_bytes(1, 1, 4, 4) == 64 + 16 + 16
    # read dy and argmax (4*4 + 4*4), write dx (16*4).
    assert fw.pool_backward_bytes(1, 1, 4, 4) == 16 + 16 + 64
    assert fw.pool_forward_bytes(1, 1, 4, 4, itemsize=8) == 128 + 32 + 16


def test_network_budget():
    f = fw.network_budget()
    conv1 = 2 * 32 * 1 * 9 * 28 * 28            # per image, one pass
    conv2 = 2 * 64 * 32 * 9 * 14 * 14
    linear = 2 * 3136 * 10
    # training: conv1 forward + dw (no dx: first layer), conv2 forward + dx + dw, linear fwd + dW + dx
    assert f["train_flops_per_image"] == 2 * conv1 + 3 * conv2 + 3 * linear == 22_767_360
    assert f["eval_flops_per_image"] == conv1 + conv2 + linear
    assert f["epoch_flops"] == pytest.approx(1.37e12, rel=0.02)
    assert f["test_set_flops"] == f["eval_flops_per_image"] * 10_000
    # numba's sparse backward (conv2 + ReLU + 2x2 pool) multiplies at most one of each window's 4 pixels
    assert f["numba_epoch_flops_at_most"] == (2 * conv1 + conv2 + 2 * conv2 // 4 + 3 * linear) * 60_000


def test_the_performed_flops_bound_needs_conv_relu_and_max_pool():
    from fastcnn.model import Sequential
    conv_pool = [{"type": "Conv2D", "in_channels": 1, "out_channels": 32, "kernel_size": 3, "padding": 1},
                 {"type": "MaxPool2D", "kernel_size": 2},
                 {"type": "Conv2D", "in_channels": 32, "out_channels": 64, "kernel_size": 3, "padding": 1}]
    for tail, sparse in (([{"type": "ReLU"}, {"type": "MaxPool2D", "kernel_size": 2}], True),
                         ([{"type": "MaxPool2D", "kernel_size": 2}], False),          # no ReLU: not fused
                         ([{"type": "ReLU"}, {"type": "AvgPool2D", "kernel_size": 2}], False)):
        model = Sequential.from_config(conv_pool + tail, backend="numpy", input_shape=(1, 28, 28))
        f = fw.network_flops(model, (1, 28, 28))
        assert (f["sparse_train"] < f["train"]) == sparse, tail
    unfused = Sequential.from_config(conv_pool + [{"type": "ReLU"}, {"type": "MaxPool2D", "kernel_size": 2}],
                                     backend="numpy", input_shape=(1, 28, 28), fuse=False)
    f = fw.network_flops(unfused, (1, 28, 28))
    assert f["sparse_train"] == f["train"]                          # never fused: the dense kernels


def test_the_performed_flops_bound_counts_padding_and_a_dense_dx():
    """17 input channels: S*C = 51 pads to a whole row tile, and dx, whose tiles would not fit,
    stays on the dense kernels."""
    from fastcnn.kernels.conv_pooled import padded_sizes, sparse_input_gradient
    from fastcnn.model import Sequential
    config = [{"type": "Conv2D", "in_channels": 1, "out_channels": 17, "kernel_size": 3, "padding": 1},
              {"type": "Conv2D", "in_channels": 17, "out_channels": 64, "kernel_size": 3, "padding": 1},
              {"type": "ReLU"}, {"type": "MaxPool2D", "kernel_size": 2}]
    f = fw.network_flops(Sequential.from_config(config, backend="numpy", input_shape=(1, 14, 14)), (1, 14, 14))
    conv1, conv2 = 2 * 17 * 9 * 14 * 14, 2 * 64 * 17 * 9 * 14 * 14
    Rp, SCp = padded_sizes(3, 3, 17, 4)
    assert not sparse_input_gradient(17, 3, 3, 4) and SCp > 51
    assert f["sparse_train"] == 2 * conv1 + conv2 + 2 * 64 * 7 * 7 * Rp * SCp + conv2


def test_network_flops_counts_dx_of_every_conv_but_the_first():
    model = mnist_cnn(backend="numpy")
    base = fw.network_flops(model)["train"]
    first_conv = fw.walk_layers(model)[0]["layer"]          # inside the fused first layer, if fused
    first_conv.need_input_grad = True
    assert fw.network_flops(model)["train"] == base + 2 * 32 * 9 * 28 * 28


def test_network_shapes_are_derived_from_the_model():
    s = fw.network_shapes(128)
    assert (s["conv1"].x_shape, s["conv1"].w_shape, s["conv1"].y_shape) == (
        (128, 1, 28, 28), (32, 1, 3, 3), (128, 32, 28, 28))
    assert (s["conv2"].x_shape, s["conv2"].w_shape, s["conv2"].y_shape) == (
        (128, 32, 14, 14), (64, 32, 3, 3), (128, 64, 14, 14))
    assert (s["pool1"].x_shape, s["pool1"].y_shape) == ((128, 32, 28, 28), (128, 32, 14, 14))
    assert (s["pool2"].x_shape, s["pool2"].y_shape) == ((128, 64, 14, 14), (128, 64, 7, 7))
    assert s["conv2"].flops == 128 * 2 * 64 * 32 * 9 * 14 * 14
    # another model, other shapes: nothing is restated
    rgb = fw.network_shapes(8, mnist_cnn(backend="numpy", in_channels=3, image_size=32), image_shape=(3, 32, 32))
    assert rgb["conv1"].x_shape == (8, 3, 32, 32) and rgb["conv2"].x_shape == (8, 32, 16, 16)
    assert rgb["pool2"].y_shape == (8, 64, 8, 8)


def test_network_cases_cover_every_op_of_the_network():
    cases = fw.network_cases(4)
    names = [c.name for c in cases]
    for conv in ("conv1", "conv2"):
        for kind in ("forward", "backward-weight", "backward-input+weight"):
            assert f"{conv} {kind}" in names
    for pool in ("pool1", "pool2"):
        assert f"{pool} forward" in names and f"{pool} backward" in names
    assert "conv1+pool1 forward" in names and "conv1+pool1 backward-weight" in names   # the fused ops
    assert "conv2+pool2 forward" in names and "conv2+pool2 backward-input+weight" in names
    assert "conv2+pool2 backward-weight" not in names and "conv1+pool1 backward-input+weight" not in names
    assert len(names) == len(set(names)) == 14
    assert fw.fused_pairs(mnist_cnn(backend="numpy", batchnorm=True)) == {}
    assert fw.fused_pairs(mnist_cnn(backend="numpy", fuse=False)) == {}
    assert {c.group for c in cases} == {"network"}


def test_general_shapes_cover_the_promised_set():
    shapes = {s.layer: s for s in fw.general_shapes()}
    assert (shapes["lenet5-5x5"].R, shapes["lenet5-5x5"].S) == (5, 5)
    assert (shapes["rgb-3to64"].C, shapes["rgb-3to64"].K, shapes["rgb-3to64"].H) == (3, 64, 32)
    assert (shapes["64to128-16x16"].C, shapes["64to128-16x16"].K, shapes["64to128-16x16"].H) == (64, 128, 16)
    assert shapes["stride2-3x3"].stride == (2, 2) and shapes["stride2-3x3"].R == 3
    assert (shapes["pointwise-1x1"].R, shapes["pointwise-1x1"].S) == (1, 1)
    stem = shapes["stem-7x7-s2"]
    assert (stem.R, stem.stride, stem.padding, stem.out_size) == (7, (2, 2), (3, 3), (32, 32))
    kinds = {(c.layer, c.kind) for c in fw.general_cases()}
    assert len(kinds) == 3 * len(shapes)


def test_intensity_counts_each_array_once():
    s = fw.ConvShape("x", 2, 3, 8, 8, 4, 3, 3, (1, 1), (1, 1))
    fwd = fw.ConvForward(s)
    least = 4 * (2 * 3 * 64 + 4 * 3 * 9 + 4 + 2 * 4 * 64)
    assert fwd.min_bytes() == least and fwd.intensity == pytest.approx(s.flops / least)
    assert fw.ConvBackwardInputWeight(s).work == 2 * s.flops
    assert fw.PoolForward(fw.PoolShape("p", 1, 1, 4, 4)).intensity == 0.0


ALL_CASES = fw.network_cases(2) + fw.at_batch(fw.general_cases(), 1)


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_op_case_check_passes_the_reference_and_catches_a_wrong_result(case):
    inputs = case.make_inputs(seed=1)
    expected = case.run(reference, inputs)
    case.check(case.run(reference, inputs), expected)
    wrong = [np.array(a, copy=True) for a in expected]
    wrong[0].reshape(-1)[0] += 1 if np.issubdtype(wrong[0].dtype, np.integer) else 0.5
    with pytest.raises(AssertionError):
        case.check(tuple(wrong), expected)


@pytest.mark.parametrize("case", fw.at_batch(fw.general_cases(), 2), ids=lambda c: c.id)
def test_numba_kernels_agree_on_the_general_shapes(case):
    inputs = case.make_inputs(seed=2)
    case.check(case.run(kernels, inputs), case.run(reference, inputs))


def test_thread_counts():
    assert measurement.thread_counts(1) == [1]
    assert measurement.thread_counts(4) == [1, 2, 3, 4]
    assert measurement.thread_counts(12) == [1, 2, 4, 8, 12]


# ------------------------------------------------------------------------------ roofline

def test_fma_counts_reads_both_assembly_syntaxes():
    att = "vfmadd231ps %zmm1, %zmm2, %zmm3\n vfmadd213ps (%rax), %ymm0, %ymm4\n vfmadd231ss %xmm1, %xmm2, %xmm3"
    intel = "vfmadd231ps zmm3, zmm2, zmm1\nvfnmadd231ps ymm0, ymm1, ymm2"
    assert roofline.fma_counts(att) == {"zmm": 1, "ymm": 1, "xmm": 0}     # scalar ss is not packed
    assert roofline.fma_counts(intel) == {"zmm": 1, "ymm": 1, "xmm": 0}


def test_cpu_vector_bits():
    assert roofline.cpu_vector_bits({"avx2", "fma", "avx512f"}) == 512
    assert roofline.cpu_vector_bits({"avx2", "fma"}) == 256
    assert roofline.cpu_vector_bits({"sse2"}) == 128
    assert roofline.cpu_vector_bits(set()) is None


def test_blas_check_says_when_blas_runs_below_the_cpu():
    haswell = [{"internal_api": "openblas", "architecture": "Haswell"}]
    forced = roofline.blas_check(haswell, 512, environ={"OPENBLAS_CORETYPE": "Haswell"})
    assert forced["below_cpu"] and forced["bits"] == 256
    assert "OPENBLAS_CORETYPE=Haswell" in forced["message"] and "AVX-512" in forced["message"]
    picked = roofline.blas_check(haswell, 512, environ={})
    assert picked["below_cpu"] and "OPENBLAS_CORETYPE" not in picked["message"]
    assert not roofline.blas_check(haswell, 256, environ={})["below_cpu"]
    assert not roofline.blas_check([{"internal_api": "openblas", "architecture": "SkylakeX"}], 512, {})["below_cpu"]
    assert roofline.blas_check([], 512, {})["message"] is None


def test_peak_kernel_is_vectorised_and_checks_its_own_work():
    kernel = roofline.PeakKernel("loop")
    cpu_bits = roofline.cpu_vector_bits(roofline.cpu_flags())
    assert kernel.vector_bits is not None and kernel.vector_bits >= 128         # packed FMAs were emitted
    if cpu_bits:
        assert kernel.vector_bits <= cpu_bits
    seconds, flops, meter = kernel.run(1, 4)
    assert seconds > 0 and flops == 2 * roofline.CHAINS * roofline.DEPTH * roofline.LOOP_LENGTH * 4
    assert set(meter) >= {"cpu_seconds_per_second", "other_load", "contended"}
    full = kernel.one
    kernel.one = lambda s, a, b, reps: full(s, a, b, reps // 2)                 # a kernel doing half the work
    with pytest.raises(AssertionError, match="skipped or altered work"):
        kernel.run(1, 4)


def test_peak_kernels_keep_their_chains_in_registers():
    """A formulation with more accumulators than the register file spills every pass and measures
    the stack instead of the FMA units (16 lanes per chain on an AVX2 CPU did: about 50 % of the
    peak); the lanes follow the CPU so neither formulation spills."""
    kernels = {name: roofline.PeakKernel(name) for name in roofline.FORMULATIONS}
    for name, kernel in kernels.items():
        assert kernel.spills == 0, (name, kernel.spills)
    assert kernels["slp"].state_shape == (roofline.SLP_CHAINS * roofline.cpu_lanes(),)
    spilling = roofline.PeakKernel("slp", 4 * roofline.cpu_lanes())       # 40 accumulators: beyond any x86
    assert spilling.spills > 0


def test_cpu_lanes_without_proc_cpuinfo_asks_llvm(monkeypatch):
    from_cpuinfo = roofline.cpu_lanes()
    monkeypatch.setattr(roofline, "cpu_flags", lambda: set())
    assert roofline.cpu_lanes() == from_cpuinfo


def test_allowed_fraction_is_the_roofline():
    assert roofline.allowed_fraction(10.0, 100.0, 5.0) == pytest.approx(0.5)
    assert roofline.allowed_fraction(100.0, 100.0, 5.0) == 1.0
    assert roofline.allowed_fraction(0.0, 100.0, 5.0) == 0.0


def test_plausibility_per_cycle():
    pc = roofline.plausibility(79.5, 256, 2445.0)
    assert pc["two_pipe_flops_per_cycle"] == 32 and pc["flops_per_cycle"] == pytest.approx(32.5, abs=0.1)
    assert roofline.plausibility(265.0, 512, None) == {"mhz": None, "two_pipe_flops_per_cycle": 64,
                                                       "flops_per_cycle": None}


def test_peak_check_warns_on_poor_scaling_and_narrow_vectors():
    peak = {"threads": 2, "scaling": 0.4, "vector_bits": 256, "contended": True}
    notes = roofline.peak_check(peak, 512)
    assert any("other programs took cores" in n for n in notes)
    assert any("256-bit FMAs" in n for n in notes)
    assert roofline.peak_check({"threads": 2, "scaling": 0.95, "vector_bits": 512}, 512) == []


def test_peak_check_blames_no_other_program_when_the_cores_were_quiet():
    """16 virtual CPUs on 8 cores' SMT siblings scale to about half with nothing else running: the
    note says so instead of telling the user to find a quiet machine."""
    notes = roofline.peak_check({"threads": 16, "scaling": 0.5, "vector_bits": 512, "contended": False}, 512)
    assert len(notes) == 1 and "no other program" in notes[0] and "took cores" not in notes[0]


def test_interleaved_calls_each_wait_untimed_when_frameworks_take_turns(monkeypatch):
    """With ``settle``, every timed call follows a pause (the other framework's threads stop
    spinning meanwhile) and an untimed call of its own, neither of which is in its time."""
    clock = [0.0]
    events = []

    def sleep(seconds):
        events.append(("sleep", seconds))
        clock[0] += seconds

    def call(name):
        def fn():
            events.append(("call", name))
            clock[0] += 0.001
        return fn

    monkeypatch.setattr(measurement.time, "sleep", sleep)
    monkeypatch.setattr(measurement.time, "perf_counter", lambda: clock[0])
    times = measurement.time_interleaved([call("a"), call("b")], min_rounds=3, min_time=0.0, warmup=1, settle=0.02)
    timed = events[2:]                                  # after one untimed warm-up call of each
    assert timed == [("sleep", 0.02), ("call", "a"), ("call", "a"), ("sleep", 0.02), ("call", "b"), ("call", "b")] * 3
    assert times == [[pytest.approx(0.001)] * 3] * 2


def test_matmul_runs_on_the_threads_it_is_given():
    one = measurement.measure_matmul(64, repeats=1, threads=1)
    assert one["threads"] == 1 and one["gflops"] > 0


# ------------------------------------------------------------------------------ contention

def _meter(wall, cpu, others):
    m = cpumeter.CpuMeter()
    m.wall, m.cpu, m.others = wall, cpu, others
    return m


def test_cpu_meter_calls_contention_when_others_take_the_needed_cores(monkeypatch):
    monkeypatch.setattr(cpumeter, "usable_cpus", lambda: 2)
    assert _meter(1.0, 2.0, 0.1).summary(2)["contended"] is False
    assert _meter(1.0, 1.2, 0.8).summary(2)["contended"] is True
    assert _meter(1.0, 1.0, 0.9).summary(1)["contended"] is False      # the spare core was free to use
    assert _meter(1.0, 0.5, 1.5).summary(1)["contended"] is True
    assert _meter(1.0, 1.0, None).summary(2)["contended"] is True      # no /proc/stat: CPU/wall rule
    with cpumeter.CpuMeter() as real:
        sum(range(10000))
    assert real.wall > 0 and real.cpu >= 0


# ------------------------------------------------------------------------------ the command

def test_usage_and_setting_errors_are_one_line(capsys, tmp_path):
    assert cli.bench_main(["--backends", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastcnn-bench: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert cli.bench_main(["--threads", "100000", "--out", str(tmp_path)]) == 2        # a usage error, as in train
    err = capsys.readouterr().err
    assert "NUMBA_NUM_THREADS" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "results.json").exists()


def test_an_out_folder_that_cannot_be_made_is_refused_before_any_timing(capsys, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("")
    assert cli.bench_main(["--quick", "--out", str(taken)]) == 2
    captured = capsys.readouterr()
    assert captured.err == (f"fastcnn-bench: error: choose another --out: '{taken}' is a file, not a folder "
                            f"(see fastcnn-bench --help)\n")
    assert captured.out == ""                                      # nothing was timed
    assert cli.bench_main(["--quick", "--data-dir", str(taken), "--out", str(tmp_path)]) == 2    # as in every command
    assert capsys.readouterr().err.startswith(f"fastcnn-bench: error: --data-dir '{taken}': is a file, not a folder")


def test_compare_torch_without_torch_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)               # import torch raises ImportError
    assert cli.bench_main(["--compare", "torch", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastcnn-bench: error: --compare torch needs PyTorch: install it")
    assert err.count("\n") == 1 and not (tmp_path / "results.json").exists()


def test_help_documents_quick_and_the_exit_status(capsys):
    assert cli.bench_main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--quick" in out and "about 1 minute" in out and "exit status" in out and "--compare" in out


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, mnist_dir):
    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    out = tmp_path_factory.mktemp("bench") / "results"
    argv = ["--quick", "--batches", "2", "--threads", str(threads), "--eval-images", "1000", "--out", str(out),
            "--data-dir", str(mnist_dir)]
    return cli.bench_main, argv, out, threads


def test_cli_quick_run_writes_table_json_and_charts(quick_run, capsys):
    main, argv, out, threads = quick_run
    assert main(argv) == 0
    printed = capsys.readouterr().out
    if threads >= 2:
        assert "Per-layer speedup" in printed and "Amdahl's law then allows" in printed, printed[-3000:]
        assert "serial share" in printed and "fitted to the speedups" in printed, printed[-3000:]
    for text in ("conv2 forward", "pool1 backward", "s/epoch", "ideal s/epoch", "Thread scaling", "numpy.matmul",
                 "FMA peak", "General shapes", "stem-7x7-s2 forward", "slowest against its roofline",
                 "fastest of 2 passes"):
        assert text in printed
    assert "fastest of 1 passes" not in printed
    # conv2's fused backward takes the sparse route: marked, and the epoch's performed FLOPs bounded
    assert "conv2+pool2 backward-input+weight (s)" in printed and "numba multiplies only" in printed
    assert "numba's sparse backward multiplies at most one pixel" in printed

    res = json.loads((out / "results.json").read_text())
    for key in ("schema", "machine", "settings", "limits", "network", "ops", "training", "evaluation",
                "thread_scaling", "slowest_op"):
        assert key in res
    lim = res["limits"]
    assert lim["peak"]["gflops"] > 0 and lim["peak"]["one_thread_gflops"] > 0 and lim["matmul"]["gflops"] > 0
    assert lim["peak"]["vector_bits"] in (128, 256, 512) and lim["bandwidth"]["gbytes_per_s"] > 0
    assert lim["peak"]["per_cycle"]["two_pipe_flops_per_cycle"] == 2 * lim["peak"]["vector_bits"] // 32 * 2
    peak = lim["peak"]["gflops"]
    assert peak == max(lim["peak"]["fma_gflops"], lim["matmul"]["gflops"])       # a rate reached bounds the peak
    assert lim["peak"]["source"] == ("fma" if peak == lim["peak"]["fma_gflops"] else "numpy.matmul")
    assert res["network"]["ideal_epoch_seconds"] == pytest.approx(res["network"]["epoch_flops"] / peak / 1e9)
    ops = {r["name"]: r for r in res["ops"]}
    assert ops["conv2 forward"]["work"] == conv_flops(128, 32, 14, 14, 64, 3, 3, 1, 1)     # timed at batch 128
    assert ops["conv2+pool2 backward-input+weight"]["sparse"] and not ops["conv1+pool1 backward-weight"]["sparse"]
    assert res["network"]["numba_epoch_flops_at_most"] < res["network"]["epoch_flops"]
    assert {"conv1 forward", "conv2 backward-weight", "conv2 backward-input+weight", "conv2 backward-input",
            "pool2 forward", "pool2 backward", "lenet5-5x5 forward", "pointwise-1x1 backward-input+weight"} <= set(ops)
    for row in res["ops"]:
        assert isinstance(row["contended"], bool)
        backends = ("numpy", "numba") if row["group"] == "network" else ("numba",)
        for backend in backends:
            entry = row["backends"][backend]
            assert entry["checked"] is True
            if not row["derived"]:
                assert entry["seconds"] > 0 and entry["rate"] > 0 and "other_load" in entry
            if row["unit"] == "GFLOP/s" and entry["rate"]:
                assert entry["fraction_of_peak"] == pytest.approx(entry["rate"] / peak)
        if row["unit"] == "GFLOP/s":
            assert 0 < row["allowed_fraction"] <= 1
    for backend in ("numpy", "numba"):
        t = res["training"][backend]
        assert t["batches"] == 2 and t["images_per_s"] > 0 and t["checked"] and isinstance(t["contended"], bool)
        assert t["epoch_seconds"] == pytest.approx(60_000 / t["images_per_s"])
        assert t["ratio_to_ideal"] == pytest.approx(t["epoch_seconds"] / res["network"]["ideal_epoch_seconds"])
        assert res["evaluation"][backend]["test_set_seconds"] > 0
    assert [r["threads"] for r in res["thread_scaling"]] == list(range(1, threads + 1))
    for name in CHARTS:
        png = out / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]          # atomic writes left no temp file

    # the report marks every contended section, and warns when the reference rate is itself starved
    res["limits"]["peak"].update(contended=True, scaling=0.3)
    res["limits"]["notes"] = roofline.peak_check(res["limits"]["peak"], 512)
    for row in res["ops"]:
        row["contended"] = True
    for section in ("training", "evaluation"):
        for row in res[section].values():
            row["contended"] = True
    res["settings"]["eval_repeats"] = 1
    text = report.format_report(res)
    assert text.splitlines()[0].startswith("WARNING: the 2-thread FMA peak") or threads == 1
    assert "conv2 forward !" in text and "general shapes" in text and "Reference rates (float32)  [! contended" in text
    assert "Evaluation (1000 test images in batches of 1000, one pass" in text
    assert report.contended_sections(res)[:3] == ["reference rates", "network ops", "general shapes"]


def test_compare_torch_runs_where_torch_is_installed(quick_run, capsys):
    pytest.importorskip("torch")
    main, argv, out, _ = quick_run
    assert main(argv + ["--compare", "torch", "--no-general", "--no-charts", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "fastcnn / torch" in printed and "PyTorch" in printed
    res = json.loads((out / "results.json").read_text())
    ops = {r["name"]: r for r in res["ops"]}
    assert ops["conv2 forward"]["backends"]["torch"]["checked"] is True
    assert ops["conv2 forward"]["fastcnn_over_torch"] > 0
    assert res["training"]["torch"]["images_per_s"] > 0 and res["training_fastcnn_over_torch"] > 0


def test_alternated_steps_run_in_blocks_each_after_a_pause_and_an_untimed_step():
    """With two frameworks' steps taking turns, each runs a block of the same batches back to back;
    a block starts SETTLE_SECONDS after the other's ended (its spinning threads settle first), with
    one untimed step on the block's first batch. A single step function is timed back to back."""
    import time
    events = []

    def step(name):
        def run(x, y):
            events.append((name, int(x[0, 0]), time.perf_counter()))
        return run

    batches = [(np.full((2, 1), i), np.zeros(2)) for i in range(6)]
    out = measurement.measure_steps({"a": step("a"), "b": step("b")}, batches, warmup=1, block=2)
    timed = events[2:]                                   # after the warm-up batch
    assert [(n, i) for n, i, _ in timed] == [("a", 1), ("a", 1), ("a", 2), ("b", 1), ("b", 1), ("b", 2),
                                             ("a", 3), ("a", 3), ("a", 4), ("b", 3), ("b", 3), ("b", 4),
                                             ("a", 5), ("a", 5), ("b", 5), ("b", 5)]
    starts = [k for k in range(1, len(timed)) if timed[k][0] != timed[k - 1][0]]
    assert all(timed[k][2] - timed[k - 1][2] >= measurement.SETTLE_SECONDS for k in starts)
    assert out["a"]["batches"] == out["b"]["batches"] == 5
    assert out["a"]["images"] == 10
    events.clear()
    single = measurement.measure_steps({"a": step("a")}, batches, warmup=1)
    assert [i for _, i, _ in events] == [0, 1, 2, 3, 4, 5] and single["a"]["batches"] == 5
