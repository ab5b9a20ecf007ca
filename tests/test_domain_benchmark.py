"""benchmarks/domain.py (issue 19) runs end to end on a tiny stand-in for the CIFAR subset."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tifffile")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_domain_benchmark_prepares_data_measures_knn_and_the_loader(tmp_path):
    from benchmarks import domain

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", x_train=rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(16) % 2, x_test=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(8) % 2)
    domain.main(["prepare", "--cifar", str(tmp_path / "c.npz"), "--root", str(tmp_path / "d"), "--train", "16"])
    assert len(list((tmp_path / "d" / "bands4" / "train").glob("*.tif"))) == 16
    domain.main(["quality", "--root", str(tmp_path / "d"), "--configs", "bands4", "--seeds", "0",
                 "--steps", "1", "--batch-size", "8", "--hidden", "16", "--out", str(tmp_path / "r.jsonl")])
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [(r["config"], r["contestant"], r["channels"]) for r in rows] == [("bands4", "byol", 4)]
    assert all(0.0 <= r["knn"] <= 1.0 and r["queries"] == 8 for r in rows)
    domain.main(["loader", "--root", str(tmp_path / "l"), "--side", "24", "--load-size", "16", "--count", "2",
                 "--rounds", "1", "--out", str(tmp_path / "l.json")])
    result = json.loads((tmp_path / "l.json").read_text())
    assert set(result["ratio_to_png8_rgb"]) == {"png8-rgb", "png16-grey", "tiff16-4band", "tiff16-13band"}
