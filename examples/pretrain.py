"""The main job from Python: ``pretrain`` a backbone, then load the encoder and embed images.

``byol_wrap.pretrain`` is the function behind ``byol-wrap pretrain`` (same keywords as the flags); it
writes checkpoints, metrics, plots and ``encoder.pt`` into ``--out`` and resumes there after a crash.
With no ``--data`` it runs offline on scikit-learn's digits and prints kNN accuracy before and after.

    python examples/pretrain.py                                    # digits, ~1-3 minutes on 2 CPU cores
    python examples/pretrain.py --data photos/ --model torchvision/resnet18 --image-size 96 --steps 2000
    python examples/pretrain.py --data ../shared/data/cifar10_small.npz --steps 500   # kNN on its test split
"""
from __future__ import annotations

import argparse

import torch

from byol_wrap.job.encoder import load_encoder
from byol_wrap.job.train import pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="a folder of images or a .npz (default: digits)")
    parser.add_argument("--out", default="runs/example", help="the run's folder")
    parser.add_argument("--model", default="byol_wrap/small_cnn")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()

    # a .npz with labels (y_train, x_test, y_test) also serves as kNN data
    knn_data = args.data if args.data and args.data.endswith(".npz") else None
    encoder_path = pretrain(args.data, out=args.out, model=args.model, image_size=args.image_size,
                            steps=args.steps, batch_size=args.batch_size, knn_data=knn_data, overwrite=True)

    encoder = load_encoder(encoder_path)          # images (uint8 or float in [0, 1]) -> representations
    image_size = encoder.meta["image_size"]
    features = encoder(torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8))
    print(f"load_encoder({str(encoder_path)!r}): {features.shape[1]}-d representations")


if __name__ == "__main__":
    main()
