"""Shared pieces of the scaling-out examples: data, backbones and command-line options.

The images come from an ``.npz`` file with an ``x_train`` array of uint8 ``(N, H, W, 3)``
images (``--data PATH`` or the ``BYOL_WRAP_DATA`` environment variable), or, with
``--synthetic N``, from N random images (for smoke tests of the training stack).
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Tuple

import torch
import torchvision
from torch import nn
from torch.utils.data import TensorDataset

from byol_wrap.job.data import load_npz_images


class TinyCNN(nn.Module):
    """A two-block CNN with a classifier head, for smoke tests (``--arch tiny``).

    The head after ``pool`` gets no gradient from BYOL: the same situation as a ResNet's
    ``fc`` with ``hidden_layer="avgpool"``.
    """

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def build_backbone(arch: str) -> Tuple[nn.Module, str]:
    """``(net, hidden_layer)`` with random weights: ``resnet18``/``resnet50`` (torchvision) or ``tiny``."""
    if arch == "tiny":
        return TinyCNN(), "pool"
    if arch in ("resnet18", "resnet50"):
        return getattr(torchvision.models, arch)(weights=None), "avgpool"
    raise ValueError(f"unknown --arch {arch!r}: use resnet18, resnet50 or tiny")


def load_images(data: Optional[str], synthetic: int = 0, image_size: int = 32, seed: int = 0) -> TensorDataset:
    """A dataset of uint8 ``(3, H, W)`` images (BYOL converts and augments them on the device)."""
    if synthetic > 0:
        generator = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (synthetic, 3, image_size, image_size), dtype=torch.uint8, generator=generator)
        return TensorDataset(images)
    path = data or os.environ.get("BYOL_WRAP_DATA")
    if not path:
        raise SystemExit("give --data PATH (an .npz with x_train, uint8 N x H x W x 3), set BYOL_WRAP_DATA, "
                         "or use --synthetic N for random images")
    if not os.path.exists(path):
        raise SystemExit(f"--data {path!r} does not exist")
    return TensorDataset(load_npz_images(path))  # uint8 (N, 3, H, W), read without pickle


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options every scaling-out example shares."""
    parser.add_argument("--data", default=None, help="npz with x_train (default: $BYOL_WRAP_DATA)")
    parser.add_argument("--synthetic", type=int, default=0, help="use N random images instead of --data")
    parser.add_argument("--arch", default="resnet18", help="resnet18, resnet50 or tiny")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128, help="per process")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    parser.add_argument("--projection-hidden-size", type=int, default=4096)
    parser.add_argument("--projection-size", type=int, default=256)
    parser.add_argument("--base-lr", type=float, default=0.2, help="LARS rate per 256 images (paper: 0.2)")
    parser.add_argument("--warmup-steps", type=int, default=None, help="default: 1%% of the steps")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="directory for encoder.pt (and checkpoints)")
    return parser


def total_steps(batches_per_epoch: int, epochs: int, max_steps: Optional[int] = None) -> int:
    """Optimizer steps of the run, capped by ``max_steps``; the learning-rate and tau schedules span them."""
    steps = batches_per_epoch * epochs
    if steps <= 0:
        raise SystemExit("the data give no full batch per process: lower --batch-size or give more images")
    return min(steps, max_steps) if max_steps else steps
