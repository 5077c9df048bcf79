"""Whole training steps and evaluation batches on real MNIST, for both backends.

``test_train_step``: forward + backward + AdamW on real shuffled batches of 128 (a different batch
each round), after checking one step's loss and gradients against the NumPy reference.
``test_evaluate``: ``model.evaluate`` on batches of 1000 test images, after checking the logits.
``extra_info`` has images/s, the seconds a 60,000-image epoch (or the 10,000-image test set) takes
at that rate, the ideal time at the session's measured FMA peak, ``gflops``, ``fraction_of_peak``
and ``fraction_of_matmul``.
"""
from __future__ import annotations

import itertools

import pytest

from fastcnn.benchmarks import measurement as fm
from fastcnn.benchmarks import workload as fw
from fastcnn.benchmarks.run import BACKEND_ORDER

BUDGET = fw.network_budget()


def _record(benchmark, images, flops_per_image, total_images, peak_gflops, matmul_gflops, label):
    rate = fm.record_rate(benchmark, flops_per_image * images, "GFLOP/s", peak_gflops, matmul_gflops,
                          images_per_round=images, peak_gflops=round(peak_gflops, 2),
                          matmul_gflops=round(matmul_gflops, 2),
                          **{f"ideal_{label}_seconds": round(flops_per_image * total_images / peak_gflops / 1e9, 3)})
    if rate:
        images_per_s = images / benchmark.stats.stats.median
        benchmark.extra_info["images_per_s"] = round(images_per_s, 1)
        benchmark.extra_info[f"{label}_seconds"] = round(total_images / images_per_s, 3)


@pytest.mark.parametrize("backend", BACKEND_ORDER)
def test_train_step(benchmark, backend, train_batches, train_reference, peak_gflops, matmul_gflops, numba_ready):
    fm.check_train_step(backend, train_batches[0], train_reference)   # loss and gradients vs reference
    model, opt = fm.make_trainer(backend)
    batches = itertools.cycle(train_batches)

    def next_batch():
        x, y = next(batches)
        return (x, y, opt), {}

    benchmark.group = f"training step: forward+backward+AdamW, batch {fw.BATCH_SIZE}, real MNIST"
    benchmark.pedantic(model.train_step, setup=next_batch, rounds=10 if backend == "numpy" else 40,
                       warmup_rounds=3)
    _record(benchmark, fw.BATCH_SIZE, BUDGET["train_flops_per_image"], fw.TRAIN_IMAGES, peak_gflops, matmul_gflops,
            "epoch")


@pytest.mark.parametrize("backend", BACKEND_ORDER)
def test_evaluate(benchmark, backend, eval_batches, eval_reference, peak_gflops, matmul_gflops, numba_ready):
    fm.check_eval(backend, eval_batches[0][0], eval_reference)       # logits vs reference
    model, _ = fm.make_trainer(backend)
    batches = itertools.cycle(eval_batches)

    def next_batch():
        x, y = next(batches)
        return (x, y), {"batch_size": fw.EVAL_BATCH_SIZE}

    benchmark.group = f"evaluation: batch of {fw.EVAL_BATCH_SIZE} MNIST test images"
    benchmark.pedantic(model.evaluate, setup=next_batch, rounds=4 if backend == "numpy" else 10,
                       warmup_rounds=1)
    _record(benchmark, fw.EVAL_BATCH_SIZE, BUDGET["eval_flops_per_image"], fw.TEST_IMAGES, peak_gflops,
            matmul_gflops, "test_set")
