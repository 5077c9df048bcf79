"""``fastcnn-bench --compare torch``: the same ops and the same network's training step in PyTorch,
same threads and dtype, each result checked against the NumPy reference.

PyTorch is never a dependency of fastcnn: it is imported here only, and only when a user asks
for the comparison (:class:`TorchSide` raises :class:`TorchUnavailable` with the fix otherwise).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np

from fastcnn.benchmarks.measurement import make_trainer
from fastcnn.benchmarks.workload import OpCase
from fastcnn.layers import Conv2D, Dropout, Flatten, Linear, MaxPool2D, ReLU
from fastcnn.testing import assert_agree, training_tolerance


class TorchUnavailable(RuntimeError):
    """``--compare torch`` was asked for, but ``import torch`` failed."""


def import_torch():
    try:
        import torch
    except ImportError as exc:
        raise TorchUnavailable(f"--compare torch needs PyTorch: install it (pip install torch) or drop "
                               f"--compare (import torch failed: {exc})") from None
    return torch


class TorchSide:
    """Runs op cases and training steps in PyTorch on ``threads`` threads (``torch.set_num_threads``)."""
    name = "torch"

    def __init__(self, threads: int):
        self.torch = import_torch()
        self.torch.set_num_threads(threads)
        self.threads = threads

    def info(self) -> dict:
        t = self.torch
        return {"version": t.__version__, "threads": t.get_num_threads(),
                "mkldnn": bool(t.backends.mkldnn.is_available())}

    def guard(self):
        return contextlib.nullcontext()

    def call(self, case: OpCase, inputs: dict) -> Callable | None:
        tensors = {k: self.torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        fn = case.torch_call(self.torch, tensors)
        if fn is None:
            return None
        no_grad = self.torch.no_grad

        def run():
            with no_grad():
                return fn()
        return run

    # ------------------------------------------------------------------ the network

    def mirror(self, model):
        """A torch ``nn.Sequential`` computing what ``model`` computes, with copies of its weights;
        returns (module, [(fastcnn layer index, torch module with parameters)])."""
        nn = self.torch.nn
        modules, weighted = [], []
        layers = model.unfused_layers()        # indices match model.layers: fused slots hold Identity
        for index, part in enumerate(layers):
            if isinstance(part, Conv2D):
                m = nn.Conv2d(part.in_channels, part.out_channels, part.kernel_size, part.stride, part.padding)
                modules.append(m)
                weighted.append((index, m))
            elif isinstance(part, Linear):
                m = nn.Linear(part.in_features, part.out_features)
                modules.append(m)
                weighted.append((index, m))
            elif isinstance(part, MaxPool2D):
                modules.append(nn.MaxPool2d(part.kernel_size, part.stride))
            elif isinstance(part, ReLU):
                modules.append(nn.ReLU())
            elif isinstance(part, Flatten):
                modules.append(nn.Flatten())
            elif isinstance(part, Dropout):
                modules.append(nn.Dropout(part.p))
            else:
                raise ValueError(f"--compare torch cannot mirror layer {part!r} in PyTorch")
        net = nn.Sequential(*modules)
        with self.torch.no_grad():
            for index, m in weighted:
                layer = layers[index]
                m.weight.copy_(self.torch.from_numpy(np.asarray(layer.params["weight"])))
                m.bias.copy_(self.torch.from_numpy(np.asarray(layer.params["bias"])))
        return net, weighted

    def _step_function(self, net, ours):
        """PyTorch's training step of ``net``, its AdamW set like fastcnn's optimizer ``ours``."""
        torch = self.torch
        F = torch.nn.functional
        opt = torch.optim.AdamW(net.parameters(), lr=ours.lr, betas=ours.betas, eps=ours.eps,
                                weight_decay=ours.weight_decay)

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            logits = net(torch.from_numpy(x))
            loss = F.cross_entropy(logits, torch.from_numpy(np.asarray(y, np.int64)))
            loss.backward()
            opt.step()
            return loss.item()
        return step

    def train_step(self, seed: int = 0) -> Callable:
        """A training-step function ``(x, y)`` of the MNIST network, from fastcnn's initial weights,
        with PyTorch's AdamW at fastcnn's settings."""
        model, opt = make_trainer("numpy", seed)
        net, _ = self.mirror(model)
        net.train()
        return self._step_function(net, opt)

    def check_train_step(self, batch: tuple, seed: int = 0) -> None:
        """Raise AssertionError unless one PyTorch step (dropout off in both: the masks cannot be the
        same) gives the NumPy reference's loss and gradients, from the same weights and batch."""
        torch = self.torch
        model, opt = make_trainer("numpy", seed, dropout=0.0)
        net, weighted = self.mirror(model)
        x, y = batch
        logits = net(torch.from_numpy(x))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(np.asarray(y, np.int64)))
        loss.backward()
        ref_loss, _ = model.train_step(x, y, opt)
        grads = {name: g for name, _, g in model.named_parameters()}
        rtol = training_tolerance(np.float32)
        got = loss.item()
        if not abs(got - ref_loss) <= rtol * abs(ref_loss):
            raise AssertionError(f"torch training step: loss {got:.7g} != reference {ref_loss:.7g}")
        for index, m in weighted:
            for key, p in (("weight", m.weight), ("bias", m.bias)):
                assert_agree(p.grad.numpy(), grads[f"{index}.{key}"], f"torch training step: gradient of {index}.{key}")
