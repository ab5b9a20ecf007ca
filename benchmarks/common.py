"""Shared pieces of the benchmarks: data, the small CNN, the contestants, training and kNN.

Every benchmark script imports this module, so all contestants get the same backbone,
data, optimizer and evaluation. Run the scripts from the repository root as modules
(``python -m benchmarks.quality ...``): the repository then comes first on ``sys.path``, so
the working copy of ``byol_wrap`` is the one measured.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from byol_wrap import BYOL
from byol_wrap.core.augment import imagenet_normalize
from byol_wrap.core.knn import knn_eval as byol_knn_eval
from byol_wrap.job.data import load_labelled

ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "BYOL_WRAP_DATA"
RESULTS_DIR = ROOT / "benchmarks" / "results"
CONTESTANTS = ("random", "byol-wrap", "byol-wrap-recipe", "byol-wrap-concat", "byol-pytorch", "byol-pytorch-classic")


# ---------------------------------------------------------------------------- data
def resolve_data_path(path: Optional[str]) -> Optional[Path]:
    """The .npz path from the argument, else from ``$BYOL_WRAP_DATA``; ``None`` if neither.

    Raises:
        FileNotFoundError: when a path is given but does not exist.
    """
    chosen = path or os.environ.get(DATA_ENV)
    if not chosen:
        return None
    resolved = Path(chosen)
    if not resolved.is_file():
        raise FileNotFoundError(
            f"no data file at {resolved}; pass --data PATH/cifar10_small.npz (or set {DATA_ENV}), "
            f"or --synthetic for random images"
        )
    return resolved


def load_data(path: Optional[Path], synthetic_sizes: Tuple[int, int] = (512, 256)) -> Dict[str, Tensor]:
    """Images as uint8 ``(N, 3, 32, 32)`` tensors and int64 labels.

    With ``path=None`` returns synthetic data (random images whose mean colour depends on
    the label, so kNN has something to find) of ``synthetic_sizes`` = (train, test).

    Example:
        >>> data = load_data(None, (20, 10))
        >>> data["x_train"].shape, data["y_test"].shape
        (torch.Size([20, 3, 32, 32]), torch.Size([10]))
    """
    if path is None:
        generator = torch.Generator().manual_seed(0)
        out: Dict[str, Tensor] = {}
        for split, n in zip(("train", "test"), synthetic_sizes):
            labels = torch.arange(n) % 10
            base = (labels.float() / 9.0 * 160 + 40).view(n, 1, 1, 1)
            noise = torch.randint(-40, 41, (n, 3, 32, 32), generator=generator).float()
            out[f"x_{split}"] = (base + noise).clamp(0, 255).to(torch.uint8)
            out[f"y_{split}"] = labels
        return out
    x_train, y_train, x_test, y_test = load_labelled(path, 32)  # .npz read without pickle; 32 px as stored
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


# ---------------------------------------------------------------------------- backbone
class SmallCNN(nn.Module):
    """A 4-stage conv net for 32x32 images (about 0.3 M parameters at ``width=32``).

    ``hidden_layer="flatten"`` gives the ``8 * width`` pooled features; ``fc`` is a
    classifier head that BYOL does not use (as in torchvision models).

    Example:
        >>> SmallCNN(8)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        channels = [3, width, 2 * width, 4 * width, 8 * width]
        layers: List[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv2d(channels[i], channels[i + 1], 3, padding=1, bias=False),
                nn.BatchNorm2d(channels[i + 1]),
                nn.ReLU(inplace=True),
            ]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels[-1], num_classes)
        self.feature_size = channels[-1]

    def forward_features(self, x: Tensor) -> Tensor:
        """The representation BYOL trains (output of ``flatten``)."""
        return self.flatten(self.pool(self.features(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x))


#: uint8 or [0, 1] images -> float, ImageNet-normalised (what both libraries' views end with)
normalize_images = imagenet_normalize


# ---------------------------------------------------------------------------- kNN
def knn_eval(net: SmallCNN, data: Dict[str, Tensor], k: int = 200, temperature: float = 0.1) -> float:
    """Weighted kNN top-1 (0-1) of ``net``'s features of un-augmented, normalised images:
    bank = train split, queries = test split (:func:`byol_wrap.core.knn.knn_eval`, in eval mode)."""
    def encode(x: Tensor) -> Tensor:
        return net.forward_features(normalize_images(x))

    return byol_knn_eval(encode, data["x_train"], data["y_train"], data["x_test"], data["y_test"], module=net,
                         k=k, temperature=temperature)


# ---------------------------------------------------------------------------- contestants
def make_learner(
    name: str,
    net: nn.Module,
    image_size: int,
    hidden_layer: Any,
    total_steps: Optional[int],
    projection_hidden_size: int = 4096,
    augment: bool = True,
) -> nn.Module:
    """Build contestant ``name`` around ``net`` (see :data:`CONTESTANTS`, minus ``random``).

    ``augment=False`` passes the identity as augmentation to both views.
    """
    identity: Optional[Callable[[Tensor], Tensor]] = None if augment else (lambda x: x)
    if name in ("byol-wrap", "byol-wrap-recipe", "byol-wrap-concat", "byol-wrap-per-view", "byol-wrap-one-pass",
                "byol-wrap-preserve"):
        view_batching = {"byol-wrap-concat": "concat", "byol-wrap-per-view": "per_view",
                         "byol-wrap-one-pass": "one_pass"}.get(name, "auto")
        return BYOL(
            net, image_size=image_size, hidden_layer=hidden_layer, projection_hidden_size=projection_hidden_size,
            augment_fn=identity, total_steps=total_steps, view_batching=view_batching,
            memory_format="preserve" if name == "byol-wrap-preserve" else "auto",
        )
    if name in ("byol-pytorch", "byol-pytorch-classic"):
        from byol_pytorch import BYOL as LucidBYOL

        return LucidBYOL(
            net, image_size=image_size, hidden_layer=hidden_layer, projection_hidden_size=projection_hidden_size,
            augment_fn=identity, augment_fn2=identity, use_simplicial_embeddings=not name.endswith("classic"),
        )
    raise ValueError(f"unknown contestant {name!r}; choose from {', '.join(CONTESTANTS[1:])}")


def run_steps(
    learner: nn.Module,
    optimizer: torch.optim.Optimizer,
    x_train: Tensor,
    steps: int,
    batch_size: int,
    seed: int,
    after_step: Optional[Callable[[int, Tensor], None]] = None,
) -> None:
    """``steps`` BYOL training steps on uint8 batches drawn with replacement from ``x_train``.

    The batches come from a generator seeded with ``seed``, so every contestant of one seed
    sees the same images. ``after_step(step, loss)`` runs after each step (1-based).
    """
    learner.train()
    generator = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        index = torch.randint(0, x_train.shape[0], (batch_size,), generator=generator)
        loss = learner(x_train[index].float().div_(255))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        learner.update_moving_average()
        if after_step is not None:
            after_step(step, loss)


# ---------------------------------------------------------------------------- reporting helpers
def machine_description() -> str:
    """One line naming the CPU, thread count and torch version."""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch.get_num_threads()={torch.get_num_threads()}, torch {torch.__version__}")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
