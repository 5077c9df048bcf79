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
from fastcnn.benchmarks.op_cases import OpCase
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
        returns (module, [(layer index, torch module with parameters)])."""
        net = torch_sequential(self.torch, model.config(), model)
        weighted = [(index, m) for index, m in enumerate(net) if any(True for _ in m.parameters())]
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
        self.check_step(*make_trainer("numpy", seed, dropout=0.0), batch)

    def model_train_step(self, model, optimizer) -> Callable:
        """A training-step function ``(x, y)`` of the torch twin of ``model`` (any fastcnn
        Sequential), from its current weights, with PyTorch's AdamW set like ``optimizer``."""
        net, _ = self.mirror(model)
        net.train()
        return self._step_function(net, optimizer)

    def check_step(self, model, optimizer, batch: tuple) -> None:
        """Raise AssertionError unless one step of ``model`` (dropout off: the masks cannot be the
        same) and one of its torch twin from the same weights give the same loss and gradients
        (``model`` takes the step: pass a copy)."""
        torch = self.torch
        net, weighted = self.mirror(model)
        net.train()
        x, y = batch
        logits = net(torch.from_numpy(x))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(np.asarray(y, np.int64)))
        loss.backward()
        ref_loss, _ = model.train_step(x, y, optimizer)
        grads = {name: g for name, _, g in model.named_parameters()}
        rtol = training_tolerance(np.float32)
        got = loss.item()
        if not abs(got - ref_loss) <= rtol * abs(ref_loss):
            raise AssertionError(f"torch training step: loss {got:.7g} != reference {ref_loss:.7g}")
        for index, m in weighted:
            for key, p in m.named_parameters():
                assert_agree(p.grad.numpy(), grads[f"{index}.{key}"], f"torch training step: gradient of {index}.{key}")


def torch_sequential(torch, config: list[dict], model=None):
    """The torch ``nn.Sequential`` that ``config`` (a :meth:`Sequential.config` list) describes, its
    parameters and buffers loaded from ``model`` (a fastcnn Sequential) when given: the names and
    layouts are those :func:`fastcnn.export.state_dict` writes, loaded with ``load_state_dict``."""
    from fastcnn.export import state_dict
    nn = torch.nn
    modules = []
    for index, e in enumerate(config):
        kind = e["type"]
        if kind == "Conv2D":
            m = nn.Conv2d(e["in_channels"], e["out_channels"], tuple(e["kernel_size"]), tuple(e["stride"]),
                          tuple(e["padding"]))
        elif kind == "Linear":
            m = nn.Linear(e["in_features"], e["out_features"])
        elif kind == "BatchNorm2D":
            m = nn.BatchNorm2d(e["num_features"], eps=e["eps"], momentum=e["momentum"])
        elif kind in ("MaxPool2D", "AvgPool2D"):
            m = (nn.MaxPool2d if kind == "MaxPool2D" else nn.AvgPool2d)(tuple(e["kernel_size"]), tuple(e["stride"]))
        elif kind == "ReLU":
            m = nn.ReLU()
        elif kind == "Flatten":
            m = nn.Flatten()
        elif kind == "Dropout":
            m = nn.Dropout(e["p"])
        else:
            raise ValueError(f"--compare torch cannot mirror layer {index} ({kind}) in PyTorch")
        modules.append(m)
    net = nn.Sequential(*modules)
    if model is not None:
        net.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict(model).items()})
    return net
