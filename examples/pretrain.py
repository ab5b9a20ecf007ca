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
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from byol_wrap import BYOL, IMAGENET_MEAN, IMAGENET_STD, byol_param_groups, embed, knn_accuracy


def small_cnn(width: int = 16) -> nn.Sequential:
    """Four conv-BN-ReLU blocks (3 with stride 2), global average pool: a ``8 * width``-d representation."""
    layers = []
    channels = [3, width, 2 * width, 4 * width, 8 * width]
    for i, (cin, cout) in enumerate(zip(channels, channels[1:])):
        layers += [nn.Conv2d(cin, cout, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def digits_augmentation(image_size: int) -> nn.Sequential:
    """Views for handwritten digits: the paper's T without flips (a mirrored 2 is no 2) and
    with milder crops (a 8% crop of an 8x8 digit is a blob), colour jitter reduced to
    brightness/contrast on these grey images."""
    import kornia.augmentation as K

    return nn.Sequential(
        K.RandomResizedCrop((image_size, image_size), scale=(0.4, 1.0), ratio=(3 / 4, 4 / 3)),
        K.RandomAffine(degrees=15, translate=(0.1, 0.1)),
        K.ColorJitter(brightness=0.4, contrast=0.4, p=0.8),
        K.RandomGaussianBlur((3, 3), sigma=(0.1, 2.0), p=0.5),
        K.Normalize(mean=torch.tensor(IMAGENET_MEAN), std=torch.tensor(IMAGENET_STD)),
    )


def load_digits(image_size: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's digits as float RGB images in [0, 1], upscaled; stratified 80/20 split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    digits = sk_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.clamp(0, 1).repeat(1, 3, 1, 1)
    labels = torch.tensor(digits.target)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels)
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def load_npz(path: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """CIFAR-like arrays: uint8 NHWC images become NCHW uint8 tensors (the learner scales them)."""
    data = np.load(path)
    def images(key: str) -> Tensor:
        return torch.from_numpy(data[key]).permute(0, 3, 1, 2).contiguous()
    return images("x_train"), torch.from_numpy(data["y_train"]), images("x_test"), torch.from_numpy(data["y_test"])


def evaluate(net: nn.Module, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor) -> float:
    """Weighted kNN top-1 (k=200, temperature 0.1, cosine) of the encoder's features."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def encode(x: Tensor) -> Tensor:
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        return net((x - mean) / std)

    was_training = net.training
    net.eval()
    accuracy = knn_accuracy(embed(encode, x_train), y_train, embed(encode, x_test), y_test)
    net.train(was_training)
    return accuracy


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
    x_train, y_train, x_test, y_test = load_npz(args.data) if args.data else load_digits(args.image_size)
    print(f"data: {args.data or 'sklearn digits'}: {len(x_train)} train, {len(x_test)} test images, "
          f"{tuple(x_train.shape[1:])}")

    net = small_cnn(args.width)
    # CIFAR-like photos get the paper's augmentations (the default); digits get digit-friendly ones
    augment = None if args.data else digits_augmentation(args.image_size)
    learner = BYOL(net, image_size=args.image_size, hidden_layer=-1, total_steps=args.steps, augment_fn=augment)
    optimizer = torch.optim.Adam(byol_param_groups(learner, args.lr, args.predictor_lr_scale))
    print(f"kNN accuracy before: {evaluate(net, x_train, y_train, x_test, y_test):.2%}")

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

    print(f"kNN accuracy after:  {evaluate(net, x_train, y_train, x_test, y_test):.2%}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), args.out)
    print(f"saved the encoder's state_dict to {args.out}")


if __name__ == "__main__":
    main()
