"""The ``byol-wrap`` command (also ``python -m byol_wrap``): ``pretrain``, ``export``, ``embed``, ``eval``,
``neighbours``, ``layers``.

Bad input (a missing path, an unknown model, an unwritable RUN_DIR...) prints one line on stderr
and exits with code 2; a run that stops on purpose (divergence, a full disk) exits with 1, its
last checkpoint intact. ``BYOL_WRAP_DEBUG=1`` shows the traceback instead.

Example:
    $ byol-wrap pretrain --out runs/digits                     # built-in digits, prints kNN before/after
    $ byol-wrap pretrain photos/ --out runs/photos --model torchvision/resnet18 --image-size 96 --epochs 20
    $ byol-wrap export runs/photos                              # encoder.pt from the last checkpoint
    $ byol-wrap embed runs/photos/encoder.pt new_photos/ --out embeddings.npz
    $ byol-wrap eval runs/photos/encoder.pt labelled/ --test labelled_test/
    $ byol-wrap layers torchvision/resnet18 --image-size 96
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import NoReturn, Optional, Sequence, Union

from .cli_encoder import HANDLERS, add_export_options, add_parsers, export_command

MODEL_OPT_IN = ("the network's spec, for an encoder whose recorded spec is not built-in (torchvision/, timm/, "
                "byol_wrap/): a <module or file.py>:<callable> you trust; it imports and runs that code")
HOW = "name it yourself on the command line: --model SPEC (that spec imports and runs its code)"
USAGE_ERRORS = (ValueError, TypeError, LookupError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                PermissionError, ImportError)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _layer(value: str) -> Union[str, int]:
    """``"-2"`` -> ``-2``; names stay strings."""
    try:
        return int(value)
    except ValueError:
        return value


def _channels(value: str) -> Union[str, int]:
    """``auto`` or a positive channel count."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be auto or a positive integer, got {value!r}")
    return count


def build_parser() -> argparse.ArgumentParser:
    """The ``byol-wrap`` argument parser.

    Example:
        >>> build_parser().parse_args(["pretrain", "--out", "runs/x", "--steps", "10"]).steps
        10
    """
    parser = _Parser(prog="byol-wrap", description="BYOL self-supervised pretraining of any image backbone.")
    commands = parser.add_subparsers(dest="command", metavar="{pretrain,export,embed,eval,neighbours,layers}",
                                     parser_class=_Parser)
    commands.required = True

    p = commands.add_parser("pretrain", help="pretrain an encoder on a folder of images (or the built-in digits)",
                            description="BYOL-pretrain a backbone; everything goes into RUN_DIR. Run the same "
                                        "command again to resume after a crash.")
    p.add_argument("data", nargs="?", default=None,
                   help="a folder of images (searched recursively), a .npz with x_train, or 'digits' "
                        "(default: scikit-learn's digits, with kNN accuracy before and after)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the run's folder")
    p.add_argument("--model", default="byol_wrap/small_cnn", metavar="SPEC",
                   help="torchvision/<name>, timm/<name>, byol_wrap/small_cnn or <module or file.py>:<callable> "
                        "(default: %(default)s); a <module or file.py> spec imports and runs that code")
    p.add_argument("--hidden-layer", type=_layer, default=None, metavar="L",
                   help="layer whose output is the representation (default: per model family; "
                        "byol-wrap layers SPEC lists them)")
    p.add_argument("--weights", default=None, metavar="PATH", help="a local state_dict to start from")
    p.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="side of the augmented views (default: 224 for image folders, 96 with byol_wrap/ models, "
                        "the arrays' own size for .npz, 32 for digits)")
    p.add_argument("--channels", type=_channels, default="auto", metavar="auto|N",
                   help="channels of the run: auto (default) takes the image files' own count from their headers "
                        "(grey folder: 1, 4-band TIFFs: 4, colour photos with some grey files: 3); files that do "
                        "not fit are converted where nothing is lost or skipped with the reason in skipped.txt")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="images per step and process (default: 128 on CPU, 256 on GPU)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, metavar="N", help="optimizer steps")
    length.add_argument("--epochs", type=int, default=None, metavar="N",
                        help="passes over the data (default: 300 steps on digits, 100 epochs otherwise)")
    p.add_argument("--lr", type=float, default=None, metavar="X",
                   help="peak learning rate (default: Adam 3e-4, 2e-3 on digits; LARS 0.2 x batch / 256)")
    p.add_argument("--optimizer", choices=("adam", "lars"), default="adam",
                   help="adam (default) or lars (the paper's recipe)")
    p.add_argument("--predictor-lr-scale", type=float, default=1.0, metavar="X",
                   help="predictor learning rate = lr x this, Adam only (default 1: the paper's single rate)")
    p.add_argument("--weight-decay", type=float, default=0.0, metavar="X", help="Adam's weight decay")
    p.add_argument("--moving-average-decay", type=float, default=0.996, metavar="X",
                   help="base EMA decay of the target, cosine to 1 over the run (default 0.996)")
    p.add_argument("--projection-size", type=int, default=256, metavar="N",
                   help="output size of projector and predictor (default 256, the paper's)")
    p.add_argument("--projection-hidden-size", type=int, default=4096, metavar="N",
                   help="hidden size of projector and predictor (default 4096, the paper's)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes decoding images (default: the usable CPUs, at most 4)")
    p.add_argument("--cache", default="auto", metavar="auto|off|DIR",
                   help="keep a folder's decoded images so later epochs read them back instead of decoding "
                        "(bit-identical): auto (default) uses RUN_DIR/cache when it needs at most half the free "
                        "disk; DIR may be shared by runs over the same data")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for the training step (default: torch's choice; on a CPU shared with other "
                        "work, 1 can be several times faster)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda when available)")
    p.add_argument("--precision", choices=("32", "bf16", "16"), default=None,
                   help="default: bf16 where the device supports it, 32 on CPU")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="steps between checkpoints (default: a tenth of the run)")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0, metavar="M",
                   help="also checkpoint after M minutes of wall time since the last one (default: %(default)g; "
                        "0: by steps only)")
    p.add_argument("--log-every", type=int, default=10, metavar="N",
                   help="steps between metrics.jsonl rows (default: %(default)s)")
    p.add_argument("--knn-data", default=None, metavar="PATH",
                   help="labelled images (one subfolder per class, or .npz with labels) for kNN accuracy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="delete the run files in RUN_DIR and start afresh")
    p.add_argument("--strict", action="store_true", help="stop at the first image that cannot be decoded")
    p.add_argument("--allow-data-change", action="store_true",
                   help="resume even though data files were added, removed or modified since the run started "
                        "(its losses then no longer match an uninterrupted run's)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    e = commands.add_parser("export", help="write RUN_DIR/encoder.pt (or --format safetensors|timm|onnx) from the "
                                           "run's last checkpoint")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run's folder, or an encoder file to convert")
    e.add_argument("--out", default=None, metavar="FILE",
                   help="a file, or a folder to write encoder.pt (.safetensors...) into (default: RUN_DIR/encoder.pt)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    e.add_argument("--model", default=None, metavar="SPEC", help=MODEL_OPT_IN)
    add_export_options(e)  # --format

    m = commands.add_parser("embed", help="embed a folder of images with an exported encoder")
    m.add_argument("encoder", metavar="ENCODER", help="an encoder.pt")
    m.add_argument("data", metavar="DATA", help="a folder of images or a .npz with x_train")
    m.add_argument("--out", required=True, metavar="FILE", help=".npz (paths, embeddings) or .csv")
    m.add_argument("--batch-size", type=int, default=256, metavar="N")
    m.add_argument("--workers", type=int, default=None, metavar="N")
    m.add_argument("--device", default=None)
    m.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    m.add_argument("--model", default=None, metavar="SPEC", help=MODEL_OPT_IN)

    add_parsers(commands)  # eval, neighbours

    layers = commands.add_parser("layers", help="list the hidden layers of a model spec and their sizes")
    layers.add_argument("spec", metavar="SPEC")
    layers.add_argument("--image-size", type=int, default=None, metavar="N",
                        help="input side for the probe (default: 32 for byol_wrap/small_cnn, else 224)")
    layers.add_argument("--max-depth", type=int, default=None, metavar="N",
                        help="show names with at most N dotted parts")
    return parser


def _pretrain(args: argparse.Namespace) -> None:
    from .train import pretrain

    options = vars(args).copy()
    del options["command"]
    pretrain(**options)


def _export(args: argparse.Namespace) -> None:
    export_command(args, HOW)


def _embed(args: argparse.Namespace) -> None:
    import torch

    from .encoder import embed_images

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with warnings.catch_warnings(record=True) as caught:  # shown as plain lines, not as Python warnings
        warnings.simplefilter("always", UserWarning)
        path = embed_images(args.encoder, args.data, args.out, batch_size=args.batch_size, workers=args.workers,
                            device=device, progress=args.progress, model=args.model, how=HOW)
    for warning in caught:
        print(f"byol-wrap embed: warning: {str(warning.message).removeprefix('embed: ')}", file=sys.stderr)
    print(f"embeddings: {path}")


def _layers(args: argparse.Namespace) -> None:
    from ..core.layers import format_layers, list_layers
    from .models import build_model

    image_size = args.image_size or (32 if args.spec.startswith("byol_wrap/") else 224)
    net = build_model(args.spec, image_size=image_size)
    print(format_layers(list_layers(net, image_size), args.max_depth))


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, KeyError) and text.startswith("'"):
        text = text.strip("'")
    return text or type(error).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit code (0 done, 1 stopped, 2 bad input).

    Example:
        >>> main(["layers", "byol_wrap/small_cnn", "--max-depth", "1"])  # doctest: +ELLIPSIS
        hidden_layer ...
        0
    """
    args = build_parser().parse_args(argv)
    handler = {"pretrain": _pretrain, "export": _export, "embed": _embed, "layers": _layers, **HANDLERS}[args.command]
    if os.environ.get("BYOL_WRAP_DEBUG"):
        handler(args)
        return 0
    from .checkpoint import TrainingStopped
    from .io import FileWriteError

    prog = f"byol-wrap {args.command}"
    try:
        handler(args)
    except TrainingStopped as error:
        print(f"{prog}: stopped: {_one_line(error)}", file=sys.stderr)
        return 1
    except FileWriteError as error:  # a full disk in export or embed (pretrain's become TrainingStopped)
        print(f"{prog}: stopped: {_one_line(error)}; nothing else was changed", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; run the same command again to resume from the last checkpoint",
              file=sys.stderr)
        return 130
    except USAGE_ERRORS as error:
        print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # an unwritable or full disk outside a checkpoint write
        print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
