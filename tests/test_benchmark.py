"""fastcnn.benchmark: work counts by hand, the mission network's FLOP budget, op cases and their
checks, and the fastcnn-bench command end to end in quick mode on real MNIST."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fastcnn import benchmark as fb
from fastcnn import reference


def test_conv_flops_by_hand():
    # N=2, C=3, 5x5 input, K=4 filters of 3x3, no padding: P = Q = 3;
    # each of the 2*4*3*3 = 72 outputs takes 3*3*3 = 27 multiply-adds = 54 FLOPs -> 3888.
    assert fb.conv_flops(2, 3, 5, 5, 4, 3, 3) == 2 * 4 * 3 * 3 * 27 * 2 == 3888
    assert fb.conv_flops(2, 3, 5, 5, 4, 3, 3, padding=1) == 2 * 4 * 5 * 5 * 27 * 2     # P = Q = 5
    assert fb.conv_flops(2, 3, 5, 5, 4, 3, 3, stride=2, padding=1) == 3888             # P = Q = 3
    assert fb.conv_flops(1, 1, 4, 6, 1, 1, 3, stride=(1, 3)) == 2 * 4 * 2 * 3           # P=4, Q=2


def test_pool_bytes_by_hand():
    # 1x1x4x4 float32 -> 2x2: read 16*4 bytes, write 4*4 (y) + 4*4 (int32 argmax).
    assert fb.pool_forward_bytes(1, 1, 4, 4) == 64 + 16 + 16
    # read dy and argmax (4*4 + 4*4), write dx (16*4).
    assert fb.pool_backward_bytes(1, 1, 4, 4) == 16 + 16 + 64
    assert fb.pool_forward_bytes(1, 1, 4, 4, itemsize=8) == 128 + 32 + 16


def test_mission_network_flops():
    f = fb.mission_flops()
    conv1 = 2 * 32 * 1 * 9 * 28 * 28            # per image, one pass
    conv2 = 2 * 64 * 32 * 9 * 14 * 14
    linear = 2 * 3136 * 10
    # training: conv1 forward + dw (no dx: first layer), conv2 forward + dx + dw, linear fwd + dW + dx
    assert f["train_flops_per_image"] == 2 * conv1 + 3 * conv2 + 3 * linear == 22_767_360
    assert f["eval_flops_per_image"] == conv1 + conv2 + linear
    assert f["epoch_flops"] == pytest.approx(1.37e12, rel=0.02)
    assert f["test_set_flops"] == f["eval_flops_per_image"] * 10_000


def test_network_flops_counts_dx_of_every_conv_but_the_first():
    from fastcnn.model import mnist_cnn
    model = mnist_cnn(backend="numpy", fuse=False)
    base = fb.network_flops(model)["train"]
    model.layers[0].need_input_grad = True
    assert fb.network_flops(model)["train"] == base + 2 * 32 * 9 * 28 * 28


def test_mission_shapes():
    s = fb.mission_shapes(128)
    assert (s["conv1"].x_shape, s["conv1"].w_shape, s["conv1"].y_shape) == (
        (128, 1, 28, 28), (32, 1, 3, 3), (128, 32, 28, 28))
    assert (s["conv2"].x_shape, s["conv2"].w_shape, s["conv2"].y_shape) == (
        (128, 32, 14, 14), (64, 32, 3, 3), (128, 64, 14, 14))
    assert (s["pool1"].x_shape, s["pool1"].y_shape) == ((128, 32, 28, 28), (128, 32, 14, 14))
    assert (s["pool2"].x_shape, s["pool2"].y_shape) == ((128, 64, 14, 14), (128, 64, 7, 7))
    assert s["conv2"].flops == 128 * 2 * 64 * 32 * 9 * 14 * 14


def test_op_cases_cover_every_op_of_the_network():
    names = [c.name for c in fb.op_cases(4)]
    for conv in ("conv1", "conv2"):
        for kind in ("forward", "backward-weight", "backward-input+weight"):
            assert f"{conv} {kind}" in names
    for pool in ("pool1", "pool2"):
        assert f"{pool} forward" in names and f"{pool} backward" in names
    assert "conv1+pool1 forward" in names and "conv1+pool1 backward-weight" in names   # the fused op
    assert len(names) == len(set(names)) == 12


@pytest.mark.parametrize("case", fb.op_cases(2), ids=lambda c: c.id)
def test_op_case_check_passes_the_reference_and_catches_a_wrong_result(case):
    inputs = case.make_inputs(seed=1)
    expected = case.run(reference, inputs)
    case.check(case.run(reference, inputs), expected)
    wrong = [np.array(a, copy=True) for a in expected]
    wrong[0].reshape(-1)[0] += 1 if np.issubdtype(wrong[0].dtype, np.integer) else 0.5
    with pytest.raises(AssertionError):
        case.check(tuple(wrong), expected)


def test_thread_counts():
    assert fb.thread_counts(1) == [1]
    assert fb.thread_counts(4) == [1, 2, 3, 4]
    assert fb.thread_counts(12) == [1, 2, 4, 8, 12]


def test_usage_and_setting_errors_are_one_line(capsys, tmp_path):
    assert fb.bench_main(["--backends", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastcnn-bench: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert fb.bench_main(["--threads", "100000", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "NUMBA_NUM_THREADS" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "results.json").exists()


def test_cli_quick_run_writes_table_json_and_charts(tmp_path, mnist_dir, capsys):
    import numba
    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    out = tmp_path / "results"
    rc = fb.bench_main(["--quick", "--batches", "2", "--threads", str(threads), "--eval-images", "1000",
                        "--out", str(out), "--data-dir", str(mnist_dir)])
    printed = capsys.readouterr().out
    assert rc == 0
    for text in ("conv2 forward", "pool1 backward", "s/epoch", "ideal s/epoch", "Thread scaling", "matmul"):
        assert text in printed

    res = json.loads((out / "results.json").read_text())
    for key in ("schema", "machine", "settings", "matmul", "network", "ops", "training", "evaluation",
                "thread_scaling"):
        assert key in res
    for key in ("cpu_model", "cpu_count", "numpy", "numba", "python", "numba_threading_layer", "blas"):
        assert key in res["machine"]
    assert res["matmul"]["gflops"] > 0
    assert res["network"]["epoch_flops"] == pytest.approx(1.37e12, rel=0.02)
    ops = {r["name"]: r for r in res["ops"]}
    assert {"conv1 forward", "conv2 backward-weight", "conv2 backward-input+weight", "conv2 backward-input",
            "pool2 forward", "pool2 backward"} <= set(ops)
    for row in res["ops"]:
        for backend in ("numpy", "numba"):
            entry = row["backends"][backend]
            assert entry["checked"] is True
            if not row["derived"]:
                assert entry["seconds"] > 0 and entry["rate"] > 0
        if not row["derived"]:
            assert row["speedup"] > 0
    assert ops["conv2 forward"]["backends"]["numba"]["fraction_of_matmul"] > 0
    for backend in ("numpy", "numba"):
        t = res["training"][backend]
        assert t["batches"] == 2 and t["images_per_s"] > 0 and t["checked"]
        assert t["epoch_seconds"] == pytest.approx(60_000 / t["images_per_s"])
        assert t["ratio_to_ideal"] == pytest.approx(t["epoch_seconds"] / res["network"]["ideal_epoch_seconds"])
        assert res["evaluation"][backend]["test_set_seconds"] > 0
    assert [r["threads"] for r in res["thread_scaling"]] == list(range(1, threads + 1))
    for name in fb.CHARTS:
        png = out / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
