"""A trained model out of fastcnn: safetensors for PyTorch and friends, ONNX for ONNX Runtime and
everything that reads ONNX. Inference only: dropout is left out, BatchNorm uses its running statistics.

* ``.safetensors``: every parameter and buffer under the name and layout an equivalent PyTorch
  ``nn.Sequential`` has (``0.weight`` (K, C, R, S), ``8.weight`` (out, in), ``1.running_mean``...),
  so its ``load_state_dict`` takes the file as it is. BatchNorm's ``num_batches_tracked`` (int64,
  a scalar) is written as 0: fastcnn does not count batches, and PyTorch reads the count only when
  the layer's momentum is None, never the case for a fastcnn layer. The metadata holds the model
  config (``fastcnn.config``, JSON), the input shape when known and ``fastcnn.data`` (JSON: the
  ``normalization`` the input is scaled by, ``(x - mean) / std`` per channel on [0, 1] pixels, and
  the ``classes`` when named).
* ``.onnx``: a graph built from ``model.config()`` with the ``onnx`` helpers (opset
  :data:`ONNX_OPSET`, IR version :data:`ONNX_IR_VERSION`), checked by ``onnx.checker``; input
  ``input`` (batch, C, H, W) with a free batch dimension, output ``logits``. The graph is float32
  whatever the model's dtype: ONNX Runtime has no float64 convolution on the CPU. Its metadata
  properties are the safetensors metadata's ``fastcnn.*`` strings.

Both libraries are the ``export`` extra (``pip install 'fastcnn[export]'``), imported only here.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np

from fastcnn.layerbase import Layer
from fastcnn.layers import AvgPool2D, BatchNorm2D, Conv2D, Dropout, Flatten, Linear, MaxPool2D, ReLU
from fastcnn.model import Sequential

#: The ONNX operator set the graph is written against (every op used exists unchanged since opset 15).
ONNX_OPSET = 17
#: The ONNX IR version written: the one of opset 17, read by every ONNX Runtime since 1.11.
ONNX_IR_VERSION = 8
FORMATS = (".safetensors", ".onnx")
INSTALL_HINT = "pip install 'fastcnn[export]'"


class ExportError(ValueError):
    """A model or destination that cannot be exported: the message leads with the fix."""


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(f"install the export extra ({INSTALL_HINT}): {module} is missing ({exc})") from None


def _layers(model: Sequential) -> list[Layer]:
    if not isinstance(model, Sequential):
        raise TypeError(f"export takes a fastcnn Sequential, got {type(model).__name__}")
    return model.unfused_layers()


def state_dict(model: Sequential) -> dict[str, np.ndarray]:
    """The tensors of an equivalent PyTorch ``nn.Sequential``'s ``state_dict()``: parameters and
    buffers by layer index as built (copies, C-contiguous), ``num_batches_tracked`` (0) for each
    BatchNorm."""
    out: dict[str, np.ndarray] = {}
    for i, layer in enumerate(_layers(model)):
        for key, value in {**layer.params, **layer.buffers}.items():
            out[f"{i}.{key}"] = np.ascontiguousarray(value).copy()
        if isinstance(layer, BatchNorm2D):
            out[f"{i}.num_batches_tracked"] = np.zeros((), np.int64)
    return out


def _metadata(model: Sequential) -> dict[str, str]:
    """The strings both formats carry: config, input shape (when known), what the model knows of its
    data (:func:`fastcnn.normalization.data_facts`: the input's normalization, the class names) and version."""
    import fastcnn
    from fastcnn.normalization import data_facts
    meta = {"fastcnn.config": json.dumps(model.config()), "fastcnn.data": json.dumps(data_facts(model).to_dict()),
            "fastcnn.version": fastcnn.__version__}
    if model.input_shape is not None:
        meta["fastcnn.input_shape"] = json.dumps(list(model.input_shape))
    return meta


def to_safetensors(model: Sequential) -> bytes:
    """The model as the bytes of a ``.safetensors`` file (see the module docstring)."""
    st = _require("safetensors.numpy")
    return st.save(state_dict(model), metadata={"format": "pt", **_metadata(model)})


def _input_dims(model: Sequential, layers: list[Layer]) -> list[int | str]:
    """(batch, C, H, W) of the graph input: the model's input shape when known, else the channels
    its first layer expects and free height and width."""
    if model.input_shape is not None:
        return ["batch", *model.input_shape]
    first = layers[0]
    channels = (first.in_channels if isinstance(first, Conv2D) else
                first.num_features if isinstance(first, BatchNorm2D) else "channels")
    return ["batch", channels, "height", "width"]


def to_onnx(model: Sequential):
    """The model as an ``onnx.ModelProto`` (inference graph, see the module docstring), checked with
    ``onnx.checker``. Raises :class:`ExportError` for a layer ONNX has no operator for here."""
    onnx = _require("onnx")
    from onnx import TensorProto, helper, numpy_helper

    layers = _layers(model)
    dtype, elem = np.dtype(np.float32), TensorProto.FLOAT
    nodes, inits = [], []
    current = "input"

    def weight(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype), name))
        return name

    for i, layer in enumerate(layers):
        out = f"{i}.{type(layer).__name__}"
        p = layer.params
        if isinstance(layer, Conv2D):
            (ph, pw), (sh, sw) = layer.padding, layer.stride
            node = helper.make_node("Conv", [current, weight(f"{i}.weight", p["weight"]),
                                             weight(f"{i}.bias", p["bias"])], [out], name=out,
                                    kernel_shape=list(layer.kernel_size), strides=[sh, sw], pads=[ph, pw, ph, pw])
        elif isinstance(layer, (MaxPool2D, AvgPool2D)):
            op = "MaxPool" if isinstance(layer, MaxPool2D) else "AveragePool"
            node = helper.make_node(op, [current], [out], name=out, kernel_shape=list(layer.kernel_size),
                                    strides=list(layer.stride))
        elif isinstance(layer, ReLU):
            node = helper.make_node("Relu", [current], [out], name=out)
        elif isinstance(layer, Flatten):
            node = helper.make_node("Flatten", [current], [out], name=out, axis=1)
        elif isinstance(layer, Linear):
            node = helper.make_node("Gemm", [current, weight(f"{i}.weight", p["weight"]),
                                             weight(f"{i}.bias", p["bias"])], [out], name=out, transB=1)
        elif isinstance(layer, BatchNorm2D):
            b = layer.buffers
            node = helper.make_node("BatchNormalization",
                                    [current, weight(f"{i}.weight", p["weight"]), weight(f"{i}.bias", p["bias"]),
                                     weight(f"{i}.running_mean", b["running_mean"]),
                                     weight(f"{i}.running_var", b["running_var"])],
                                    [out], name=out, epsilon=layer.eps)
        elif isinstance(layer, Dropout):
            continue                                    # the identity at inference
        else:
            raise ExportError(f"remove layer {i} ({type(layer).__name__}) to export to ONNX: it has no ONNX "
                              f"operator here")
        nodes.append(node)
        current = out
    if nodes:
        nodes[-1].output[0] = "logits"
    else:
        nodes.append(helper.make_node("Identity", ["input"], ["logits"], name="identity"))
    kept = [layer for layer in layers if not isinstance(layer, Dropout)]
    flat = any(isinstance(layer, (Flatten, Linear)) for layer in kept)
    out_dims = (_input_dims(model, layers) if not kept else
                ["batch", kept[-1].out_features] if isinstance(kept[-1], Linear) else
                ["batch", None] if flat else ["batch", None, None, None])
    graph = helper.make_graph(
        nodes, "fastcnn", [helper.make_tensor_value_info("input", elem, _input_dims(model, layers))],
        [helper.make_tensor_value_info("logits", elem, out_dims)], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="fastcnn", ir_version=ONNX_IR_VERSION)
    helper.set_model_props(proto, _metadata(model))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export(model: Sequential, path: str | Path) -> Path:
    """Write ``model`` to ``path`` in the format its suffix names (:data:`FORMATS`), atomically:
    a failed export leaves no file and an existing one unchanged. Returns the path."""
    from fastcnn._atomic import atomic_write

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ExportError(f"name the output with a suffix among {', '.join(FORMATS)}: {str(path)!r} has "
                          f"{suffix or 'none'}")
    data = to_safetensors(model) if suffix == ".safetensors" else to_onnx(model).SerializeToString()
    return atomic_write(path, lambda fh: fh.write(data))


# ------------------------------------------------------------------------------ the command

PROG = "fastcnn-export"


def build_parser():
    from fastcnn._cli import HelpFormatter, Parser
    p = Parser(prog=PROG, formatter_class=HelpFormatter,
               description="Export a model for inference: .safetensors (the state_dict of an equivalent PyTorch\n"
                           "nn.Sequential, model config in the metadata) or .onnx (opset "
                           f"{ONNX_OPSET}, for ONNX Runtime).\nDropout is left out; BatchNorm uses its "
                           "running statistics.",
               epilog="exit status: 0 written; 2 bad model, output or missing export extra; 1 another failure.")
    p.add_argument("model", metavar="MODEL",
                   help="a checkpoint, a JSON model file (a Sequential.config() list; random weights) or a "
                        "built-in name (mnist-cnn, lenet5, cifar-cnn; random weights)")
    p.add_argument("out", metavar="OUT", type=Path, help="the file to write: .safetensors or .onnx")
    return p


def export_main(argv: list[str] | None = None) -> int:
    """The ``fastcnn-export`` command. Returns the exit status."""
    from fastcnn._cli import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError, print_error, write_line
    from fastcnn.modelio import open_model
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print_error(PROG, f"{exc} (see {PROG} --help)")
        return EXIT_USAGE
    except SystemExit as exc:                               # --help
        return int(exc.code or 0)
    suffix = args.out.suffix.lower()
    if suffix not in FORMATS:
        print_error(PROG, f"name OUT with a suffix among {', '.join(FORMATS)}: {str(args.out)!r} has "
                          f"{suffix or 'none'}")
        return EXIT_USAGE
    try:
        _require("safetensors.numpy" if suffix == ".safetensors" else "onnx")    # before loading the model
        _, model = open_model(args.model)
        written = export(model, args.out)
    except KeyboardInterrupt:
        print_error(PROG, "interrupted")
        return EXIT_INTERRUPTED
    except OSError as exc:
        print_error(PROG, f"choose a writable OUT: {exc.filename or args.out}: {exc.strerror or exc}")
        return EXIT_USAGE
    except ValueError as exc:                               # ExportError, ConfigError, CheckpointError, ...
        print_error(PROG, str(exc))
        return EXIT_USAGE
    except Exception as exc:                                # noqa: BLE001 - one line, no traceback
        print_error(PROG, str(exc) or type(exc).__name__)
        return EXIT_ERROR
    write_line(f"wrote {written}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(export_main())
