"""The main job keeps working: examples/pretrain.py for a couple of steps, on digits and on a CIFAR-like .npz."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration  # runs the example script in a subprocess
ROOT = Path(__file__).resolve().parents[1]


def run_pretrain(tmp_path, *extra):
    out = tmp_path / "encoder.pt"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "pretrain.py"), "--steps", "2", "--batch-size", "8",
         "--out", str(out), *extra],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    accuracies = re.findall(r"kNN accuracy (?:before|after):\s+([\d.]+)%", result.stdout)
    assert len(accuracies) == 2 and all(0 <= float(a) <= 100 for a in accuracies), result.stdout
    state = torch.load(out)
    assert any(k.endswith("running_mean") for k in state), "the saved file is the encoder's state_dict"
    return result.stdout


def test_pretrain_on_digits(tmp_path):
    assert "sklearn digits" in run_pretrain(tmp_path)


def test_pretrain_on_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), y_train=rng.integers(0, 10, 40),
             x_test=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), y_test=rng.integers(0, 10, 20))
    assert "40 train, 20 test" in run_pretrain(tmp_path, "--data", str(path))
