"""BYOL-pretrain a small CNN and report weighted-kNN accuracy of its features before and after.

With no arguments it runs offline on scikit-learn's bundled digits (8x8 grayscale, upscaled
to 32x32 RGB) in a few minutes on 2 CPU cores. ``--data PATH.npz`` takes arrays shaped like
CIFAR-10 (``x_train`` (N, H, W, 3) uint8, ``y_train``, ``x_test``, ``y_test``); labels are
only used for the kNN evaluation.

    python examples/pretrain.py                                   # digits, offline
    python examples/pretrain.py --data ../shared/data/cifar10_small.npz --steps 500
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor

from byol_wrap import BYOL, byol_param_groups
from byol_wrap.augment import IMAGENET_MEAN, IMAGENET_STD
from byol_wrap.data import load_labelled
from byol_wrap.io import atomic_save
from byol_wrap.knn import knn_eval
from byol_wrap.models import small_cnn
from byol_wrap.train import digits_augmentation


def evaluate(learner: BYOL, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor) -> float:
    """Weighted kNN top-1 (k=200, temperature 0.1, cosine) of the encoder's features of un-augmented,
    normalised images (the learner's embedding), in eval mode."""
    def encode(x: Tensor) -> Tensor:
        return learner(x, return_embedding=True, return_projection=False)

    return knn_eval(encode, x_train, y_train, x_test, y_test, module=learner)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a .npz with x_train/y_train/x_test/y_test (default: sklearn digits)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    # 1 (the paper's single rate) by default: at this high Adam rate a 10x predictor learned worse on the
    # digits, at 3e-4 on CIFAR it learned better (figures in BENCHMARKS.md)
    parser.add_argument("--predictor-lr-scale", type=float, default=1.0,
                        help="predictor learning rate = lr x this (byol_param_groups)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=16, help="CNN width (representation = 8 x width)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="encoder.pt", help="where to save the trained encoder's state_dict")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load_labelled(args.data or "digits", args.image_size)
    print(f"data: {args.data or 'sklearn digits'}: {len(x_train)} train, {len(x_test)} test images, "
          f"{tuple(x_train.shape[1:])}")

    net = small_cnn(args.width)
    # CIFAR-like photos get the paper's augmentations (the default); digits get digit-friendly ones.
    # Both end with ImageNet statistics (for the default augmentations that is normalize="auto").
    augment = None if args.data else digits_augmentation(args.image_size)
    learner = BYOL(net, image_size=args.image_size, hidden_layer=-1, total_steps=args.steps, augment_fn=augment,
                   normalize=(IMAGENET_MEAN, IMAGENET_STD))
    optimizer = torch.optim.Adam(byol_param_groups(learner, args.lr, args.predictor_lr_scale))
    print(f"kNN accuracy before: {evaluate(learner, x_train, y_train, x_test, y_test):.2%}")

    start = time.time()
    generator = torch.Generator().manual_seed(args.seed)
    for step in range(1, args.steps + 1):
        batch = x_train[torch.randint(len(x_train), (args.batch_size,), generator=generator)]
        loss = learner(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        learner.update_moving_average()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}  loss {loss.item():.4f}  tau {learner.tau:.5f}  "
                  f"{time.time() - start:.0f}s", flush=True)

    print(f"kNN accuracy after:  {evaluate(learner, x_train, y_train, x_test, y_test):.2%}")
    atomic_save(net.state_dict(), args.out)
    print(f"saved the encoder's state_dict to {args.out}")


if __name__ == "__main__":
    main()
