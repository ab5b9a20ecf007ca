"""Smoke tests: each benchmark script runs a couple of steps on tiny synthetic data.

They keep the scripts working; the numbers they print are not checked (timings on a
shared machine are noise), but the structure of the results and the kNN evaluation are.
"""
import json

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


def test_quality_script_runs_resumes_reports_and_plots(tmp_path):
    out = tmp_path / "q.jsonl"
    argv = ["--splits", "synthetic", "--steps", "2", "4", "--batch-size", "8", "--width", "4", "--seeds", "0",
            "--projection-hidden-size", "16", "--eval-every", "1", "--out", str(out),
            "--contestants", "random", "byol-wrap", "byol-wrap:schedule=constant,pred=10", "byol-pytorch-classic"]
    quality.main(argv)
    rows = quality.read_rows(out)
    # cosine runs once per budget; constant-tau and byol-pytorch once, at the longest budget
    assert [(r["contestant"], r["steps"]) for r in rows] == [
        ("random", 0), ("byol-wrap", 4), ("byol-wrap", 2), ("byol-wrap:schedule=constant,pred=10", 4),
        ("byol-pytorch-classic", 4)]
    assert all(0.0 <= r["knn"] <= 100.0 for r in rows)
    assert [s for s, _ in rows[1]["curve"]] == [0, 1, 2, 3, 4]
    assert quality.main(argv) == []  # resumable: every (split, contestant, budget, seed) is done
    constant = rows[3]
    assert quality.value_at(rows, "synthetic", constant["contestant"], 2) == {0: dict(constant["curve"])[2]}
    md, png = tmp_path / "q.md", tmp_path / "q.png"
    quality.main(["--report", str(out), "--md", str(md), "--png", str(png)])
    assert "byol-wrap:schedule=constant,pred=10" in md.read_text() and png.stat().st_size > 0


def test_parse_contestant_fills_defaults_and_rejects_unknown_keys():
    assert quality.parse_contestant("byol-wrap") == {"name": "byol-wrap", "lr": 3e-4, "pred": 1.0, "tau": 0.996,
                                                     "schedule": "cosine"}
    assert quality.parse_contestant("byol-wrap:lr=1e-3,schedule=constant")["lr"] == 1e-3
    assert not quality.depends_on_budget(quality.parse_contestant("byol-wrap:schedule=constant"))
    for bad in ("byol-wrap:foo=1", "byol-pytorch:pred=10", "nope", "byol-wrap:schedule=linear", "byol-wrap:lr"):
        with pytest.raises(ValueError):
            quality.parse_contestant(bad)


def test_report_takes_paired_differences_to_the_baseline():
    def row(spec, seed, knn, steps=10):
        return {"split": "digits", "contestant": spec, "steps": steps, "seed": seed, "knn": knn,
                "curve": [[0, 50.0], [steps, knn]]}

    rows = [row("byol-wrap", 0, 60.0), row("byol-wrap", 1, 70.0),
            row("byol-wrap:pred=10", 0, 61.0), row("byol-wrap:pred=10", 1, 67.0)]
    text = quality.report(rows, "byol-wrap")
    assert "| byol-wrap | 10 | 65.0 (60.0 to 70.0, n=2) |" in text
    assert "| byol-wrap:pred=10 | 10 | 64.0 (61.0 to 67.0, n=2) | -1.0 (-3.0 to +1.0) |" in text


def test_cifar_splits_are_disjoint_and_the_queries_differ(tmp_path):
    n = 50
    x = torch.arange(n).view(n, 1, 1, 1).expand(n, 3, 32, 32).to(torch.uint8).contiguous()
    cifar = {"x_train": x, "y_train": torch.arange(n) % 10}
    ids = {}
    for name in ("cifar-a", "cifar-b"):
        split = quality.make_split(name, cifar)
        ids[name] = {k: set(split[k][:, 0, 0, 0].tolist()) for k in ("train", "bank_x", "query_x")}
        parts = ids[name]
        assert len(parts["train"]) == 30 and len(parts["bank_x"]) == len(parts["query_x"]) == 10
        assert not (parts["train"] & parts["bank_x"] or parts["train"] & parts["query_x"]
                    or parts["bank_x"] & parts["query_x"])
        assert torch.equal(split["query_y"], split["query_x"][:, 0, 0, 0].long() % 10)
    assert not ids["cifar-a"]["query_x"] & ids["cifar-b"]["query_x"]


def test_digits_are_upscaled_to_32px_rgb_with_their_brightness():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    x, y = quality.digits_images()
    original = sklearn_datasets.load_digits()
    assert x.shape == (1797, 3, 32, 32) and x.dtype == torch.uint8 and y.tolist() == original.target.tolist()
    assert torch.equal(x[:, 0], x[:, 2])
    expected = original.images.mean() / 16 * 255  # bilinear upscaling keeps the mean up to the borders
    assert abs(x.float().mean().item() - expected) < 0.1 * expected


def test_ablation_script_appends_one_line_per_run(tmp_path):
    out = tmp_path / "a.jsonl"
    common_args = ["--synthetic", "--steps", "2", "--batch-size", "8", "--width", "4", "--eval-every", "1",
                   "--projection-hidden-size", "16", "--out", str(out)]
    ablations.main(["--name", "a", "--predictor-lr-scale", "10", "--blur", "0", "0", "--moving-average-decay", "1.0",
                    "--no-schedule"] + common_args)
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


def test_quality_test_mode_scores_saved_encoders_on_the_test_split(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    npz = tmp_path / "c.npz"
    np.savez(npz, x_train=rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8), y_train=np.arange(50) % 10,
             x_test=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), y_test=np.arange(20) % 10)
    common_args = ["--cifar", str(npz), "--splits", "cifar-a", "--contestants", "random", "byol-wrap", "--steps", "2",
                   "--seeds", "0", "--batch-size", "8", "--width", "4", "--projection-hidden-size", "16",
                   "--encoders", str(tmp_path / "enc")]
    quality.main(common_args + ["--out", str(tmp_path / "runs.jsonl")])
    rows = quality.main(common_args + ["--test", "--out", str(tmp_path / "test.jsonl")])
    assert [(r["split"], r["contestant"], r["steps"]) for r in rows] == [("cifar-a>test", "random", 0),
                                                                        ("cifar-a>test", "byol-wrap", 2)]
    # the random encoder is the seed's initial network: the same weights give the same test kNN
    torch.manual_seed(0)
    net = common.SmallCNN(4)
    data = common.load_data(npz)
    expected = 100 * quality.knn_eval(net, data["x_train"], data["y_train"], data["x_test"], data["y_test"], k=200)
    assert rows[0]["knn"] == pytest.approx(expected, abs=0.006)  # stored rounded to 0.01


def test_color_jitter_script_runs(tmp_path):
    from benchmarks import color_jitter

    out = tmp_path / "c.json"
    payload = color_jitter.main(["--threads", "1", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text())["cases"] == payload["cases"]
    for case in payload["cases"].values():
        assert set(case) == {"byol-wrap, order per batch (default)", "byol-wrap, order per image",
                             "kornia ColorJitter", "hue step: shift_hue", "hue step: kornia adjust_hue"}
        assert all(ms > 0 for ms in case.values()), case
