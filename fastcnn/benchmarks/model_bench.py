"""``fastcnn-bench --model NAME|FILE``: one model's training step, timed per backend (and beside its
PyTorch twin with ``--compare torch``), then per layer and direction, on batches of its input shape:
real MNIST where the model takes 1x28x28 images, seeded random images and labels otherwise.

Every timed step is first checked: the Numba step against the NumPy reference's loss and gradients,
the PyTorch step against the reference with dropout off (the masks cannot be the same). Epoch times
are extrapolated from the timed batches to 60,000 images, as for the MNIST network.
"""
from __future__ import annotations

import datetime as _dt
import time

import numpy as np

from fastcnn.benchmarks.measurement import machine_info, measure_steps, mnist_batches
from fastcnn.benchmarks.workload import BATCH_SIZE, BLOCK_BATCHES, TRAIN_IMAGES, network_flops
from fastcnn.layers import Linear
from fastcnn.model import Sequential
from fastcnn.optim import AdamW
from fastcnn.testing import assert_agree
from fastcnn.train import DEFAULT_LR, DEFAULT_WEIGHT_DECAY

SCHEMA = "fastcnn-bench-model/1"
#: Input shapes tried, in order, for a model file that does not state its own: MNIST's, then CIFAR's.
CANDIDATE_SIDES = (28, 32)


def input_shape_of(model: Sequential) -> tuple[int, int, int]:
    """The model's (C, H, W): its own when known, else the first of 28x28 and 32x32 images (with the
    channels its first layer takes) that it runs on. ValueError when none does."""
    if model.input_shape is not None:
        return model.input_shape
    first = model.config()[0]
    channels = first.get("in_channels", first.get("num_features", 1))
    backend = model.backend_name
    model.set_backend("numpy")                          # one image, no compilation
    try:
        for side in CANDIDATE_SIDES:
            try:
                model.forward(np.zeros((1, channels, side, side), np.float32))
                return channels, side, side
            except ValueError:
                continue
    finally:
        model.set_backend(backend)
    raise ValueError(f"give the model file a first layer for {channels}x28x28 or {channels}x32x32 images: "
                     f"fastcnn-bench --model times those input shapes")


def num_classes_of(model: Sequential) -> int:
    last = [layer for layer in model.unfused_layers() if isinstance(layer, Linear)]
    if not last:
        raise ValueError("end the model with a Linear layer (its outputs are the class scores) to time training")
    return last[-1].out_features


def batches_for(model: Sequential, shape: tuple, count: int, *, data_dir=None, seed: int = 0) -> tuple[list, str]:
    """``count`` training batches of ``shape`` and where they come from."""
    if shape == (1, 28, 28):
        from fastcnn.data import load_dataset
        dataset = load_dataset("mnist", data_dir=data_dir, splits=("train",))
        return mnist_batches(dataset, count, seed=seed), f"real MNIST from {dataset.source_dir}"
    rng = np.random.default_rng(seed)
    classes = num_classes_of(model)
    out = [(rng.standard_normal((BATCH_SIZE, *shape)).astype(np.float32), rng.integers(0, classes, BATCH_SIZE))
           for _ in range(count)]
    return out, f"random images and labels (seed {seed})"


def twin(model: Sequential, backend: str, *, dropout: float | None = None, seed: int = 0) -> tuple:
    """A copy of ``model`` on ``backend`` (its weights and statistics, the dropout stream of
    ``seed``; ``dropout`` replaces every Dropout's p), with AdamW at fastcnn-train's defaults."""
    config = model.config()
    if dropout is not None:
        config = [{**e, "p": dropout} if e["type"] == "Dropout" else e for e in config]
    copy = Sequential.from_config(config, seed=seed, backend=backend, input_shape=model.input_shape)
    source = model.state_arrays()
    for key, array in copy.state_arrays().items():
        array[...] = source[key]
    return copy, AdamW(copy, lr=DEFAULT_LR["adamw"], weight_decay=DEFAULT_WEIGHT_DECAY["adamw"])


def _check_step(model: Sequential, backend: str, batch: tuple) -> None:
    """One step on ``backend`` gives the NumPy reference's loss and gradients (same weights and masks)."""
    results = []
    for name in ("numpy", backend):
        copy, opt = twin(model, name)
        loss, _ = copy.train_step(*batch, opt)
        results.append((loss, {n: np.array(g) for n, _, g in copy.named_parameters()}))
    (ref_loss, ref), (loss, grads) = results
    assert_agree(np.float32(loss), np.float32(ref_loss), f"{backend} training step: loss")
    for n, g in ref.items():
        assert_agree(grads[n], g, f"{backend} training step: gradient of {n}")


def run_model_benchmark(settings, model_name: str, model: Sequential, log) -> dict:
    """Time ``model``'s training step per backend in ``settings`` (and PyTorch's with
    ``settings.compare``), then profile it per layer; returns the results dict (results.json)."""
    import numba

    s = settings
    started = time.perf_counter()
    threads = numba.get_num_threads()
    torch_side = None
    if s.compare == "torch":
        from fastcnn.benchmarks.torch_compare import TorchSide
        torch_side = TorchSide(threads)                    # fails early, with its one-line error
    shape = input_shape_of(model)
    num_classes_of(model)                               # a model without class scores fails here, not mid-run
    model.input_shape = shape
    need = s.warmup_batches + max(s.batches if "numba" in s.backends else 0,
                                  s.reference_batches if "numpy" in s.backends else 0)
    batches, source = batches_for(model, shape, need, data_dir=s.data_dir, seed=s.seed)
    log(f"model {model_name}: {'x'.join(map(str, shape))} input, {source}")
    flops = network_flops(model, shape)
    results: dict = {"schema": SCHEMA, "model": model_name, "config": model.config(), "input_shape": list(shape),
                     "data": source, "train_flops_per_image": flops["train"],
                     "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "training": {}, "profile": None}
    small = (batches[0][0][:2], batches[0][1][:2])
    if "numba" in s.backends:
        log("compiling the Numba kernels for this model's layers (not timed)")
        t0 = time.perf_counter()
        copy, opt = twin(model, "numba")
        copy.train_step(*small, opt)
        results["compile_seconds"] = time.perf_counter() - t0
    for name in s.backends:
        count = s.reference_batches if name == "numpy" else s.batches
        log(f"training on {name}: {s.warmup_batches} warm-up + {count} timed batches of {BATCH_SIZE}")
        if name != "numpy":
            _check_step(model, name, small)
        copy, opt = twin(model, name, seed=s.seed)
        steps = {name: lambda x, y, m=copy, o=opt: m.train_step(x, y, o)}
        if name == "numba" and torch_side:
            torch_side.check_step(*twin(model, "numpy", dropout=0.0), small)
            steps["torch"] = torch_side.model_train_step(*twin(model, "numpy", seed=s.seed))
        measured = measure_steps(steps, batches[:s.warmup_batches + count], s.warmup_batches,
                                 threads=threads if name != "numpy" else 1)
        for key, row in measured.items():
            row["gflops"] = flops["train"] * row["images_per_s"] / 1e9
            results["training"][key] = row
    tr = results["training"]
    if {"numba", "torch"} <= set(tr):
        results["training_fastcnn_over_torch"] = tr["numba"]["epoch_seconds"] / tr["torch"]["epoch_seconds"]
    backend = "numba" if "numba" in s.backends else s.backends[0]
    count = s.batches if backend == "numba" else s.reference_batches
    log(f"per-layer profile on {backend}: {count} batches")
    copy, opt = twin(model, backend, seed=s.seed)
    for x, y in batches[:s.warmup_batches]:
        copy.train_step(x, y, opt)
    profile = copy.start_profile()
    for x, y in batches[s.warmup_batches:s.warmup_batches + count]:
        copy.train_step(x, y, opt)
    copy.stop_profile()
    results["profile"] = {"backend": backend, **profile.to_dict(), "table": profile.table()}
    results["machine"] = machine_info()
    if torch_side:
        results["machine"]["torch"] = torch_side.info()
    results["settings"] = {"quick": s.quick, "backends": list(s.backends), "compare": s.compare,
                           "batch_size": BATCH_SIZE, "dtype": "float32", "threads": threads,
                           "batches": {"numba": s.batches, "numpy": s.reference_batches},
                           "warmup_batches": s.warmup_batches, "seed": s.seed}
    results["elapsed_seconds"] = time.perf_counter() - started
    return results


def format_model_report(results: dict) -> str:
    """The tables ``fastcnn-bench --model`` prints."""
    st, m = results["settings"], results["machine"]
    out = [f"fastcnn-bench --model {results['model']}: {'x'.join(map(str, results['input_shape']))} input, "
           f"{results['data']}",
           f"{m['cpu_model']}, {st['threads']} threads, batch {st['batch_size']}, float32, "
           f"{results['train_flops_per_image'] / 1e6:.1f} MFLOP per training image",
           "", f"Training ({TRAIN_IMAGES:,}-image epoch extrapolated from the timed batches; the first "
           f"{st['warmup_batches']} batches untimed; steps alternated with torch in blocks of {BLOCK_BATCHES} batches, "
           "each block after a 20 ms pause and one untimed step)"]
    head = ["backend", "batches", "per batch", "images/s", "s/epoch", "GFLOP/s", "CPU/wall"]
    rows = [[name, t["batches"], f"{1e3 * t['seconds_per_batch']:.2f} ms", f"{t['images_per_s']:.0f}",
             f"{t['epoch_seconds']:.1f} s", f"{t['gflops']:.1f}", f"{t['cpu_seconds_per_second']:.2f}"]
            for name, t in results["training"].items()]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    out += ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in [head, *rows]]
    if results.get("training_fastcnn_over_torch"):
        out.append(f"fastcnn / torch epoch time: {results['training_fastcnn_over_torch']:.2f}")
    out += ["", f"Per layer ({results['profile']['backend']}):", results["profile"]["table"]]
    return "\n".join(out)
