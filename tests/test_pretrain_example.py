"""examples/pretrain.py (the Python call of the main job) for a couple of steps, on digits and on a .npz."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

pytestmark = pytest.mark.integration  # runs the example script in a subprocess

ROOT = Path(__file__).resolve().parents[1]


def run_example(tmp_path, *extra):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "pretrain.py"), "--steps", "2", "--batch-size", "8",
         "--out", str(out), *extra],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    accuracies = re.findall(r"kNN accuracy (?:before|after):\s+([\d.]+)%", result.stdout)
    assert len(accuracies) == 2 and all(0 <= float(a) <= 100 for a in accuracies), result.stdout
    saved = torch.load(out / "encoder.pt", weights_only=True)
    assert any(k.endswith("running_mean") for k in saved["state_dict"]), "the file holds the encoder's weights"
    assert "128-d representations" in result.stdout
    return result.stdout


def test_example_on_digits(tmp_path):
    assert "data: digits (1438 images)" in run_example(tmp_path)


def test_example_on_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), y_train=rng.integers(0, 10, 40),
             x_test=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), y_test=rng.integers(0, 10, 20))
    assert "(40 images)" in run_example(tmp_path, "--data", str(path))
