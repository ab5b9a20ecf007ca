"""Smoke tests: each benchmark script runs a couple of steps on tiny synthetic data.

They keep the scripts working; the numbers they print are not checked (timings on a
shared machine are noise), but the structure of the results and the kNN evaluation are.
"""
import json
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import ablations, common, quality, speed


def test_knn_eval_separates_classes_that_differ_in_brightness():
    # Synthetic classes differ by mean brightness (independent of any training); a random
    # CNN with a global-average-pooled feature sees that, so kNN must beat chance (10%) by far.
    torch.manual_seed(0)
    data = common.load_data(None, (200, 100))
    accuracy = common.knn_eval(common.SmallCNN(8), data, k=10)
    assert accuracy > 0.5


def test_load_data_reads_npz_layout(tmp_path):
    x = (torch.arange(2 * 32 * 32 * 3) % 256).to(torch.uint8).reshape(2, 32, 32, 3).numpy()
    path = tmp_path / "d.npz"
    import numpy as np

    np.savez(path, x_train=x, y_train=np.array([3, 4]), x_test=x[:1], y_test=np.array([5]))
    data = common.load_data(common.resolve_data_path(str(path)))
    assert data["x_train"].shape == (2, 3, 32, 32)
    assert data["x_train"][1, 2, 0, 0].item() == x[1, 0, 0, 2]  # HWC -> CHW
    assert data["y_test"].tolist() == [5]
    with pytest.raises(FileNotFoundError):
        common.resolve_data_path(str(tmp_path / "missing.npz"))


def test_ideal_step_matches_hand_computed_ema():
    torch.manual_seed(0)
    step = speed.IdealStep("smallcnn", concat=False, hidden=16, tau=0.9)
    before_target = [t.clone() for t in step.target]
    step(torch.rand(4, 3, 32, 32))
    for old, t, o in zip(before_target, step.target, step.online):
        torch.testing.assert_close(t, 0.9 * old + 0.1 * o.detach())


def test_quality_script_runs_and_summarizes(tmp_path):
    out = tmp_path / "q.json"
    quality.main(["--synthetic", "--steps", "2", "--batch-size", "8", "--width", "4", "--seeds", "0",
                  "--lrs", "1e-3", "--projection-hidden-size", "16", "--eval-every", "1", "--out", str(out),
                  "--contestants", "random", "byol-wrap", "byol-wrap-recipe", "byol-pytorch-classic",
                  "--synthetic-sizes", "64", "32"])
    payload = json.loads(out.read_text())
    contestants = ["random", "byol-wrap", "byol-wrap-recipe", "byol-pytorch-classic"]
    assert [r["contestant"] for r in payload["runs"]] == contestants
    assert all(0.0 <= r["knn_top1"] <= 1.0 for r in payload["runs"])
    assert [s for s, _ in payload["runs"][1]["curve"]] == [1, 2]
    png = tmp_path / "curve.png"
    quality.main(["--plot", str(out), "--png", str(png)])
    assert png.stat().st_size > 0


def test_ablation_script_appends_one_line_per_run(tmp_path):
    out = tmp_path / "a.jsonl"
    common_args = ["--synthetic", "--steps", "2", "--batch-size", "8", "--width", "4", "--eval-every", "1",
                   "--projection-hidden-size", "16", "--out", str(out)]
    ablations.main(["--name", "a", "--predictor-lr-scale", "10", "--blur", "0", "0", "--tau", "1.0", "--no-schedule"]
                   + common_args)
    ablations.main(["--name", "b", "--byol-pytorch"] + common_args)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["args"]["name"] for line in lines] == ["a", "b"]
    assert [step for step, _, _ in lines[0]["curve"]] == [1, 2]
    assert all(0.0 <= accuracy <= 100.0 for line in lines for _, accuracy, _ in line["curve"])


def test_augmentation_with_default_factors_is_the_library_default_at_32px():
    # Same stages and probabilities as byol_wrap's default T and T' at 32 px (blur kernel 3).
    from byol_wrap import default_augmentations

    args = ablations.parse_args(["--name", "x", "--synthetic"])
    for view, library in zip((1, 2), default_augmentations(32)):
        ours = ablations.augmentation(args, view)
        assert [type(m).__name__ for m in ours] == [type(m).__name__ for m in library]
        assert [getattr(m, "p", None) for m in ours] == [getattr(m, "p", None) for m in library]


def test_summarize_mean_and_spread():
    runs = [{"contestant": "a", "lr": 1.0, "steps": 5, "knn_top1": v} for v in (0.30, 0.40)]
    (row,) = quality.summarize(runs)
    assert row["mean"] == pytest.approx(35.0) and row["min"] == pytest.approx(30.0)
    assert row["std"] == pytest.approx(7.0710678, rel=1e-6)


def test_speed_script_runs(tmp_path):
    out = tmp_path / "s.json"
    speed.main(["--arch", "smallcnn", "--sizes", "32", "--batch-size", "4", "--steps", "1", "--warmup", "0",
                "--ema-repeats", "1", "--projection-hidden-size", "16", "--no-memory", "--out", str(out)])
    payload = json.loads(out.read_text())
    ratios = payload["sizes"]["32"]["ratios"]
    for key in ("a_wrap_vs_ideal", "b_wrap_vs_byol_pytorch", "c_augment_share_direct", "one_pass_vs_per_view_wrap"):
        assert ratios[key] > 0
    assert payload["d_ema_speedup_vs_inplace_loop"] > 0
    assert payload["sizes"]["32"]["paired_ratios"]["a_wrap_vs_ideal"]["n"] == 1


def test_paired_ratios_cancel_a_load_change_between_rounds():
    # round 2 runs 3x slower for everybody (load); within each round wrap is 1.1x ideal
    times = {"byol-wrap": [1.1, 3.3, 1.1], "ideal": [1.0, 3.0, 1.0]}
    summary = speed.paired_ratios(times)["a_wrap_vs_ideal"]
    assert summary["median"] == pytest.approx(1.1) and summary["n"] == 3


@pytest.mark.slow
def test_gpu_script_tiny_cpu_smoke(tmp_path):
    """benchmarks/gpu.py --tiny --device cpu: every kind of row runs (compiled with aot_eager)."""
    from benchmarks import gpu

    out = tmp_path / "gpu.json"
    payload = gpu.main(["--tiny", "--device", "cpu", "--rows", "byol-wrap", "byol-pytorch-noaug", "augment-share",
                        "jpeg-loader", "--out", str(out)])
    assert json.loads(out.read_text())["results"].keys() == payload["results"].keys()
    results = payload["results"]
    for key in ("byol-wrap:eager", "byol-wrap:compiled", "byol-pytorch-noaug:eager", "byol-pytorch-noaug:compiled"):
        assert "error" not in results[key], results[key]
        assert results[key]["images_per_s"] > 0 and results[key]["peak_memory_mib"] is None  # no CUDA memory on CPU
    assert 0 < results["augment-share"]["augment_share"] < 1
    jpeg = results["jpeg-loader"]
    assert "images_per_s" in jpeg or "byol_wrap.data" in jpeg["skipped"], jpeg
    table = out.with_suffix(".md").read_text()
    assert "| byol-wrap | compiled |" in table and "Default augmentations" in table


@pytest.mark.integration
def test_benchmarks_run_as_modules():
    import subprocess

    root = Path(__file__).resolve().parents[1]
    for name in ("speed", "gpu", "quality", "ablations", "soak", "finite_checks", "pipeline", "early_exit",
                 "compile_amp"):
        result = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--help"], cwd=root, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0 and "usage" in result.stdout, result.stderr[-2000:]
