"""One-factor ablations of byol-wrap on the quality benchmark's setup (what the recipe was chosen from).

Same data, ``common.SmallCNN``, training loop (``common.run_steps``) and kNN evaluation as
``quality.py``. Factors: the augmentations' crop scale, blur and solarization probabilities
and colour-jitter probability (through ``byol_augmentation``'s overrides), tau_base (with or
without the cosine schedule), the predictor's learning-rate multiplier, the learning rate.
``--byol-pytorch`` runs classic byol-pytorch in the same loop instead. Each call appends one
JSON line (arguments, kNN curve, seconds) to ``--out``. With the defaults below every factor
is byol-wrap's default.

Examples (from the repository root)::

    python -m benchmarks.ablations --data ../shared/data/cifar10_small.npz --name base
    python -m benchmarks.ablations --data ../shared/data/cifar10_small.npz --name pred10 --predictor-lr-scale 10
    python -m benchmarks.ablations --data ../shared/data/cifar10_small.npz --name tau1 --moving-average-decay 1.0 --no-schedule
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from benchmarks.common import RESULTS_DIR, SmallCNN, knn_eval, load_data, resolve_data_path, run_steps
from byol_wrap import BYOL, byol_augmentation
from byol_wrap.core.augment import IMAGENET_MEAN, IMAGENET_STD


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="path to cifar10_small.npz (default: $BYOL_WRAP_DATA)")
    parser.add_argument("--synthetic", action="store_true", help="small synthetic data (smoke runs)")
    parser.add_argument("--name", required=True, help="label of this run in the output")
    parser.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=16, help="SmallCNN width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--moving-average-decay", type=float, default=0.996, help="the target's EMA decay (tau_base)")
    parser.add_argument("--no-schedule", action="store_true", help="constant tau (no total_steps)")
    parser.add_argument("--crop-min", type=float, default=0.08, help="lower end of the crop scale")
    parser.add_argument("--blur", type=float, nargs=2, default=[1.0, 0.1], metavar=("P1", "P2"),
                        help="blur probability in T and T'")
    parser.add_argument("--solarize", type=float, default=0.2, help="solarization probability in T'")
    parser.add_argument("--jitter-p", type=float, default=0.8, help="colour-jitter probability")
    parser.add_argument("--predictor-lr-scale", type=float, default=1.0)
    parser.add_argument("--projection-hidden-size", type=int, default=1024)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--byol-pytorch", action="store_true", help="classic byol-pytorch instead of byol-wrap")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "ablations" / "ablations.jsonl")
    return parser.parse_args(argv)


def augmentation(args: argparse.Namespace, view: int) -> nn.Sequential:
    """T (view 1) or T' (view 2) of the paper at 32 px, with this run's factors."""
    return byol_augmentation(
        32, view, crop_scale=(args.crop_min, 1.0), jitter_p=args.jitter_p, blur_p=args.blur[view - 1],
        solarize_p=args.solarize if view == 2 else 0.0,
    )


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    path = None if args.synthetic else resolve_data_path(args.data)
    if path is None and not args.synthetic:
        raise SystemExit("give --data PATH (or set BYOL_WRAP_DATA), or --synthetic")
    data = load_data(path, (512, 256))
    torch.manual_seed(args.seed)
    random.seed(args.seed)  # byol-pytorch draws some augmentations from Python's random
    net = SmallCNN(args.width)
    if args.byol_pytorch:
        from byol_pytorch import BYOL as LucidBYOL

        learner = LucidBYOL(net, image_size=32, hidden_layer="flatten",
                            projection_hidden_size=args.projection_hidden_size, use_simplicial_embeddings=False)
        predictor = learner.online_predictor
    else:
        learner = BYOL(net, 32, "flatten", projection_hidden_size=args.projection_hidden_size,
                       augment_fn=augmentation(args, 1), augment_fn2=augmentation(args, 2),
                       normalize=(IMAGENET_MEAN, IMAGENET_STD),  # as the default augmentations get with "auto"
                       moving_average_decay=args.moving_average_decay, total_steps=None if args.no_schedule else args.steps)
        predictor = learner.predictor
    predictor_ids = {id(p) for p in predictor.parameters()}
    rest = [p for p in learner.parameters() if p.requires_grad and id(p) not in predictor_ids]
    optimizer = torch.optim.Adam([{"params": rest},
                                  {"params": list(predictor.parameters()), "lr": args.lr * args.predictor_lr_scale}],
                                 lr=args.lr)
    curve = []
    started = time.time()

    def after_step(step: int, loss: torch.Tensor) -> None:
        if step % args.eval_every == 0 or step == args.steps:
            curve.append((step, round(100 * knn_eval(net, data), 2), round(loss.item(), 4)))
            print(args.name, "step %d: kNN %.2f%%, loss %.4f" % curve[-1], f"({time.time() - started:.0f} s)", flush=True)

    run_steps(learner, optimizer, data["x_train"], args.steps, args.batch_size, args.seed, after_step)
    result = {"command": "python -m benchmarks.ablations " + " ".join(sys.argv[1:] if argv is None else argv),
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "curve": curve, "seconds": round(time.time() - started)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as file:
        file.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
