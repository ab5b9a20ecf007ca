import os
from pathlib import Path

import pytest
import torch
from torch import nn

torch.set_num_threads(min(2, torch.get_num_threads()))


class SmallCNN(nn.Module):
    """A home-made backbone: conv -> BN -> ReLU -> conv -> BN -> ReLU -> pool -> fc."""

    def __init__(self, in_channels: int = 3, width: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, stride=2)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: intra-op threads gain nothing, and on a busy 2-core machine their spin-waiting
    made such test files several times slower (measured). Use with pytestmark; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_cnn():
    torch.manual_seed(0)
    return SmallCNN()


@pytest.fixture
def cifar_path():
    """Path to the shared CIFAR-10 subset, or skip."""
    candidates = [os.environ.get("BYOL_WRAP_DATA", ""),
                  str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_small.npz")]
    for path in candidates:
        if path and Path(path).is_file():
            return path
    pytest.skip("cifar10_small.npz not found (set BYOL_WRAP_DATA to its path)")
