"""The argument parser of ``fastcnn-train``: its option groups (data, compute, training, output,
checkpoints), their help text and the type checks of ``--val-split`` and ``--image-size``. What the
parsed arguments mean is :mod:`fastcnn._run_config`'s and :mod:`fastcnn.cli`'s job.
"""
from __future__ import annotations

import argparse

# Only light modules at the top (fastcnn.cli installs its signal handlers first): build_parser
# imports the modules that hold the choices and defaults.
from fastcnn._cli import TRAIN_PROG as PROG
from fastcnn._cli import HelpFormatter, Parser, float_in, int_at_least

__all__ = ["build_parser"]


_EPILOG = """\
examples:
  fastcnn-train                                   # 5 epochs of AdamW on MNIST, plots in plots/
  fastcnn-train --epochs 1 --backend numpy --metrics out/metrics.json
  fastcnn-train --model lenet5 --summary          # layer table: shapes, parameters, FLOPs, memory
  fastcnn-train --model my_net.json --epochs 2    # any network of fastcnn's layers (docs/models.md)
  fastcnn-train --optimizer sgd --lr 0.05 --threads 2 --data-dir ~/data/mnist --no-download
  fastcnn-train --checkpoint run.npz --save-model model.npz   # Ctrl-C, then:
  fastcnn-train --resume run.npz                  # continues bit-identically
  fastcnn-eval model.npz                          # test accuracy, confusion matrix, worst errors

data: --data-dir, then $FASTCNN_DATA_DIR, then ~/.cache/fastcnn/<dataset> (downloaded there
unless --no-download).
stopping: Ctrl-C (SIGINT), SIGTERM, SIGHUP or SIGQUIT stops before the next batch; the last
complete epoch's checkpoint, the metrics (with the final status) and the plots so far are kept; a
second signal stops at once.
divergence: a NaN or infinite loss or weight, or a mean loss over the last --diverge-window
batches above --diverge-factor times the run's starting loss, stops the run (exit 3); the last
good checkpoint is kept and no --save-model file is written.
outputs: an existing file is replaced only with --overwrite (plots always; --metrics and
--save-model also when resuming), never when it is of another kind or an input of the run.
exit codes: 0 ok, 1 runtime error (data, checkpoint, files), 2 bad arguments, 3 training diverged,
128+signal when stopped by one: 130 SIGINT, 143 SIGTERM, 129 SIGHUP, 131 SIGQUIT.
"""


def build_parser() -> Parser:
    from fastcnn.backend import BACKENDS, ENV_VAR
    from fastcnn.datasets.select import SOURCES
    from fastcnn.train import (
        DEFAULT_LR,
        DEFAULT_MOMENTUM,
        DEFAULT_WEIGHT_DECAY,
        DTYPES,
        OPTIMIZERS,
        SCHEDULES,
        TrainConfig,
    )

    d = TrainConfig()
    p = Parser(
        prog=PROG,
        description="Train a fastcnn network (default: the MNIST CNN, conv 32 - pool - conv 64 - pool - dropout -\n"
                    "linear) on the CPU: one line per epoch, loss and accuracy plots, optional JSON metrics.",
        epilog=_EPILOG, formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=SOURCES, default=None,
                   help="which dataset (default: what --data-dir holds, else mnist); 'custom': any folder with "
                        "MNIST's four IDX file names; 'folder': DIR/train/<class>/*, DIR/test/<class>/* images; "
                        "'npz': a .npz of x_train, y_train, x_test, y_test; 'cifar10': CIFAR-10's binary version")
    g.add_argument("--data-dir", metavar="DIR", default=None,
                   help="folder with the four IDX files (gzipped or not), an image folder, a .npz file, or "
                        "CIFAR-10's .tar.gz or extracted folder; must exist when given")
    g.add_argument("--image-size", metavar="HxW", type=_image_size, default=None,
                   help="resize image-folder images to H x W (needed when their sizes differ)")
    g.add_argument("--skip-bad", action="store_true",
                   help="image folders: leave out files that cannot be decoded (with a warning) instead of failing")
    g.add_argument("--no-download", action="store_true", help="never download; fail if the files are not found")
    g.add_argument("--limit-train", metavar="N", type=int_at_least(1), default=None,
                   help="use only the first N training images (default: all)")
    g.add_argument("--limit-test", metavar="N", type=int_at_least(1), default=None,
                   help="use only the first N test images (default: all)")
    g.add_argument("--val-split", metavar="N", type=_val_split, default=None,
                   help="hold out N training images (or a fraction, e.g. 0.1), seeded and class-balanced, for "
                        "per-epoch validation; the test set is then scored once, at the end")
    g.add_argument("--test-each-epoch", action="store_true",
                   help="with --val-split: also score the test set after every epoch (labelled test)")
    g.add_argument("--early-stop", metavar="K", type=int_at_least(1), default=None,
                   help="with --val-split: stop after K epochs without a lower validation loss and keep the "
                        "best epoch's model")
    g.add_argument("--augment", choices=("shift", "crop-flip"), default=None,
                   help="augment training batches: 'shift' (translations up to 2 px), 'crop-flip' (4-px padded "
                        "random crops and horizontal flips)")

    g = p.add_argument_group("compute")
    g.add_argument("--backend", choices=BACKENDS, default=None,
                   help=f"conv/pool implementation (default: ${ENV_VAR}, else numba)")
    g.add_argument("--threads", metavar="N", type=int_at_least(1), default=None,
                   help="Numba threads, 1..NUMBA_NUM_THREADS (numba backend), or BLAS threads, 1..CPU count "
                        "(numpy backend) (default: all cores)")
    g.add_argument("--dtype", choices=DTYPES, default=d.dtype, help="floating-point type of weights and data")

    g = p.add_argument_group("training")
    from fastcnn.zoo import MODELS
    g.add_argument("--model", metavar="NAME|FILE", default=d.model,
                   help=f"the network: {', '.join(MODELS)}, or a model file (JSON layer list, see docs/models.md, "
                        f"or a checkpoint's architecture) (default: {d.model})")
    g.add_argument("--epochs", metavar="N", type=int_at_least(1), default=d.epochs, help="number of epochs")
    g.add_argument("--batch-size", metavar="N", type=int_at_least(1), default=d.batch_size,
                   help="training batch size (at most the number of training images)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="optimizer")
    lrs = ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
    g.add_argument("--lr", metavar="LR", type=float_in(0.0, lo_open=True), default=None,
                   help=f"peak learning rate (default: {lrs})")
    g.add_argument("--lr-schedule", choices=SCHEDULES, default=d.lr_schedule,
                   help="'cosine': anneal per step from --lr to 0 over the whole run; 'constant': keep --lr")
    g.add_argument("--momentum", metavar="M", type=float_in(0.0, 1.0), default=None,
                   help=f"SGD momentum, sgd only (default: {DEFAULT_MOMENTUM:g})")
    wds = ", ".join(f"{k} {v:g}" for k, v in DEFAULT_WEIGHT_DECAY.items())
    g.add_argument("--weight-decay", metavar="WD", type=float_in(0.0), default=None,
                   help=f"weight decay: decoupled for adamw, L2 for sgd (default: {wds})")
    g.add_argument("--dropout", metavar="P", type=float_in(0.0, 1.0), default=d.dropout,
                   help="mnist-cnn: dropout probability before the final linear layer, 0 <= P < 1")
    g.add_argument("--batchnorm", action="store_true",
                   help="mnist-cnn: add batch normalisation after each convolution")
    g.add_argument("--seed", metavar="N", type=int_at_least(0), default=d.seed,
                   help="seed of the weights, dropout and shuffling")
    g.add_argument("--diverge-factor", metavar="F", type=float_in(0.0), default=d.divergence_factor,
                   help="stop as diverged when the mean loss of the last --diverge-window batches exceeds F "
                        "times the run's starting loss (0: stop only on NaN or infinity)")
    g.add_argument("--diverge-window", metavar="N", type=int_at_least(1), default=d.divergence_window,
                   help="batches averaged for --diverge-factor")

    g = p.add_argument_group("output")
    g.add_argument("--plots-dir", metavar="DIR", default="plots",
                   help="where train_loss.png and test_acc.png are written (created if missing)")
    g.add_argument("--metrics", metavar="PATH", default=None,
                   help="also write the configuration, per-epoch metrics, timings and final status as JSON here "
                        "(its folder is created if missing)")
    g.add_argument("--no-timings", action="store_true",
                   help="leave wall-clock times out of --metrics, so that runs with the same seed, backend "
                        "and thread count write byte-identical files")
    g.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors (no progress bar)")
    g.add_argument("--summary", action="store_true",
                   help="print the model's layers for the data (output shape, parameters, forward FLOPs per image, "
                        "activation memory of a batch) and exit without training")
    g.add_argument("--profile", action="store_true",
                   help="after training, print the time of each layer's forward and backward and of the optimizer "
                        "step, in ms per batch and %% of the step (timing does not change results)")

    g = p.add_argument_group("checkpoints")
    g.add_argument("--checkpoint", metavar="PATH", default=None,
                   help="after every epoch, save everything needed to resume (weights, optimizer, random "
                        "generators, metrics, settings) to PATH, atomically (its folder is created if missing)")
    g.add_argument("--resume", metavar="PATH", default=None,
                   help="continue the run saved in checkpoint PATH with its settings (give --epochs to train "
                        "longer); later epochs are saved to PATH too unless --checkpoint names another file")
    g.add_argument("--overwrite", action="store_true",
                   help="let --checkpoint and --save-model replace an existing fastcnn checkpoint or model "
                        "file (either), and --metrics a metrics file (refused otherwise, to protect earlier "
                        "runs; other files, links and devices are never replaced)")
    g.add_argument("--save-model", metavar="PATH", default=None,
                   help="when training completes, save the model alone (for fastcnn-eval) to PATH (its folder is "
                        "created if missing)")
    return p


def _val_split(text):
    from fastcnn.validation import parse_val_split
    try:
        return parse_val_split(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _image_size(text):
    from fastcnn.datasets.folder import parse_image_size
    try:
        return parse_image_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
