"""The commands about a trained encoder: ``byol-wrap eval``, ``byol-wrap neighbours`` and ``export --format``.

Kept beside :mod:`byol_wrap.job.cli`, which adds these parsers and dispatches to :data:`HANDLERS`.

Example:
    $ byol-wrap eval runs/digits/encoder.pt digits
    $ byol-wrap neighbours runs/photos/encoder.pt photos/ --out neighbours.png
    $ byol-wrap export runs/r18 --format timm
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional

__all__ = ["add_parsers", "add_export_options", "export_command", "HANDLERS"]


def _device(name: Optional[str]) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def add_parsers(commands: Any) -> None:
    """Add ``eval`` and ``neighbours`` to the ``byol-wrap`` sub-command parsers."""
    v = commands.add_parser("eval", help="kNN and linear-probe accuracy of an encoder vs the untrained network",
                            description="Frozen-feature evaluation on labelled images: weighted kNN top-1 (k=20, "
                                        "200) and a linear probe, for the encoder and the same architecture "
                                        "untrained. Prints a table, writes a JSON report and confusion.png.")
    v.add_argument("encoder", metavar="ENCODER", help="an encoder.pt or encoder.safetensors")
    v.add_argument("labelled", metavar="LABELLED",
                   help="a folder with one subfolder of images per class, a .npz with x_train/y_train, or 'digits'")
    v.add_argument("--test", default=None, metavar="LABELLED_TEST",
                   help="a separate labelled test set (default: the .npz's x_test, the digits' test split, or a "
                        "stratified part of LABELLED)")
    v.add_argument("--out", default=None, metavar="REPORT_JSON",
                   help="the JSON report; confusion.png goes beside it (default: eval/report.json next to ENCODER)")
    v.add_argument("--test-fraction", type=float, default=0.2, metavar="X",
                   help="share of each class held out for testing when there is no test split (default 0.2)")
    v.add_argument("--seed", type=int, default=0, help="splits, probe solver and the baseline's weights")
    v.add_argument("--batch-size", type=int, default=256, metavar="N")
    v.add_argument("--workers", type=int, default=None, metavar="N")
    v.add_argument("--device", default=None)
    v.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the untrained network")
    v.add_argument("--model", default=None, metavar="SPEC", help=_model_help())
    v.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    n = commands.add_parser("neighbours", help="draw nearest neighbours in the encoder's representation",
                            description="A few images (chosen by --seed) and their nearest neighbours among the "
                                        "others, for the encoder and for the same architecture untrained.")
    n.add_argument("encoder", metavar="ENCODER", help="an encoder.pt or encoder.safetensors")
    n.add_argument("data", metavar="FOLDER", help="a folder of images (searched recursively), a .npz or 'digits'")
    n.add_argument("--out", required=True, metavar="PNG")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--queries", type=int, default=6, metavar="N", help="rows (default 6)")
    n.add_argument("--k", type=int, default=6, metavar="N", help="neighbours per row (default 6)")
    n.add_argument("--max-images", type=int, default=2000, metavar="N",
                   help="images searched, chosen by --seed (default 2000)")
    n.add_argument("--workers", type=int, default=None, metavar="N")
    n.add_argument("--device", default=None)
    n.add_argument("--model", default=None, metavar="SPEC", help=_model_help())
    n.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _model_help() -> str:
    from .cli import MODEL_OPT_IN

    return MODEL_OPT_IN


def _how() -> str:
    from .cli import HOW

    return HOW


def add_export_options(parser: argparse.ArgumentParser) -> None:
    """``--format`` of ``byol-wrap export``."""
    from .export_formats import FORMATS

    parser.add_argument("--format", choices=FORMATS, default="pt",
                        help="pt (encoder.pt, default), safetensors, timm (a timm or torchvision state dict), onnx")


def _caught(command: str, run: Callable[[], Any]) -> Any:
    """Run ``run``, showing its UserWarnings as plain lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = run()
    for warning in caught:
        print(f"byol-wrap {command}: warning: {warning.message}", file=sys.stderr)
    return result


def _eval(args: argparse.Namespace) -> None:
    from .evaluate import evaluate, format_table

    if not 0 < args.test_fraction < 1:
        raise ValueError(f"--test-fraction must be between 0 and 1, got {args.test_fraction}")
    out = Path(args.out) if args.out else Path(args.encoder).parent / "eval" / "report.json"
    report = _caught("eval", lambda: evaluate(
        args.encoder, args.labelled, args.test, out=out, test_fraction=args.test_fraction, seed=args.seed,
        baseline=args.baseline, batch_size=args.batch_size, workers=args.workers, device=_device(args.device),
        model=args.model, how=_how(), progress=args.progress))
    print(format_table(report))
    print(f"report: {out} (confusion matrices: {out.parent / 'confusion.png'})")


def _neighbours(args: argparse.Namespace) -> None:
    from .neighbours import draw_neighbours

    for name in ("queries", "k", "max_images"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer")
    path = _caught("neighbours", lambda: draw_neighbours(
        args.encoder, args.data, args.out, seed=args.seed, queries=args.queries, k=args.k,
        max_images=args.max_images, device=_device(args.device), workers=args.workers, model=args.model,
        how=_how(), progress=args.progress))
    print(f"neighbours: {path}")


def export_command(args: argparse.Namespace, how: Optional[str] = None) -> None:
    """``byol-wrap export RUN_DIR [--format F] [--out FILE] [--overwrite] [--model SPEC]``."""
    from .export_formats import export

    path = export(args.run_dir, args.format, args.out, overwrite=args.overwrite, model=args.model, how=how)
    print(f"{'encoder' if args.format == 'pt' else args.format}: {path}")


HANDLERS: Dict[str, Callable[[argparse.Namespace], None]] = {"eval": _eval, "neighbours": _neighbours}
