"""byol_wrap.pretrain on a folder the test writes: every run file, skipped files, faults (full disk, NaN).

Small on purpose (16 px views, batch 4, 32/64-wide heads): each run takes a second or two on CPU.
"""
import errno
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from byol_wrap.job.checkpoint import RunError, TrainingStopped, compare_arguments, resume_state  # noqa: E402
from byol_wrap.job.monitor import collapse_metric  # noqa: E402
from byol_wrap.job.train import pretrain  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(image_size=16, batch_size=4, projection_size=32, projection_hidden_size=64, workers=0, progress=False)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_images(root: Path, count: int = 12) -> list:
    """Nested folders of readable images (RGB, RGBA, grayscale, 16-bit), and the broken files, returned."""
    rng = np.random.default_rng(0)
    (root / "a" / "b").mkdir(parents=True)
    for i in range(count):
        folder = root / ("a" if i % 2 else "a/b")
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(folder / f"rgb{i}.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8)).save(root / "alpha.PNG")
    Image.fromarray(rng.integers(0, 256, (18, 22), dtype=np.uint8)).save(root / "a" / "gray.jpg")
    Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)).save(root / "deep16.png")
    jpeg = root / "a" / "b" / "whole.jpg"
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(jpeg)
    broken = [root / "truncated.jpg", root / "a" / "text.jpg", root / "empty.png"]
    broken[0].write_bytes(jpeg.read_bytes()[:200])
    broken[1].write_text("this is not an image")
    broken[2].write_bytes(b"")
    (root / "notes.txt").write_text("not searched: no image extension")
    (root / ".hidden.png").write_bytes(b"hidden files are skipped")
    return sorted(str(p) for p in broken)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    broken = write_images(root)
    out = tmp_path_factory.mktemp("run") / "run"
    encoder = pretrain(root, out=out, steps=6, checkpoint_every=3, log_every=1, **SMALL)
    return root, out, encoder, broken


def test_folder_run_writes_every_file(folder_run):
    root, out, encoder, _ = folder_run
    assert encoder == out / "encoder.pt"
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 6 and state["finished"] is True
    assert {"learner", "optimizer", "scheduler", "rng", "arguments", "epoch", "batch_in_epoch"} <= set(state)
    assert any(key.startswith("target_net.") for key in state["learner"])
    exported = torch.load(encoder, weights_only=True)
    assert exported["meta"]["model_spec"] == "byol_wrap/small_cnn" and exported["meta"]["steps"] == 6
    # the encoder is the trained net of the checkpoint (the learner's "net." entries), not a fresh one
    for key, value in exported["state_dict"].items():
        assert torch.equal(value, state["learner"]["net." + key]), key
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
    for row in rows:
        assert {"epoch", "loss", "tau", "lr", "images_per_s", "data_wait", "collapse", "skipped"} <= set(row)
        assert math.isfinite(row["loss"]) and 0 <= row["loss"] <= 8 and 0 <= row["data_wait"] <= 1
    # each row holds the tau and learning rate its step used (hand computations): tau on the paper's cosine
    # schedule over the 6 steps, the rate after 1 warm-up step (1 % of the run, at least 1) on a cosine to 0
    tau = [1 - (1 - 0.996) * (math.cos(math.pi * k / 6) + 1) / 2 for k in range(6)]
    assert [row["tau"] for row in rows] == pytest.approx(tau, rel=1e-12)
    lr = [3e-4] + [3e-4 * (1 + math.cos(math.pi * k / 5)) / 2 for k in range(5)]
    assert [row["lr"] for row in rows] == pytest.approx(lr, rel=1e-12)
    for plot in ("training.png", "augmentations.png"):
        assert (out / "plots" / plot).read_bytes().startswith(PNG_MAGIC)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_skipped_txt_names_exactly_the_broken_files(folder_run):
    _, out, _, broken = folder_run
    lines = (out / "skipped.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == broken
    assert all(line.split("\t")[1].strip() for line in lines), "every skipped file has a reason"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped"] == len(broken)


def test_encoder_loads_and_embeds(folder_run, tmp_path, capsys):
    from byol_wrap.job.cli import main
    from byol_wrap.job.data import default_load_size, eval_images, read_image
    from byol_wrap.job.data.channels import meta_pixel_format
    from byol_wrap.job.encoder import load_encoder

    root, out, encoder, broken = folder_run
    target = tmp_path / "emb.npz"
    assert main(["embed", str(encoder), str(root), "--out", str(target), "--no-progress", "--workers", "0"]) == 0
    assert "byol-wrap embed: warning: 3 unreadable image" in capsys.readouterr().err  # a plain line, no warning
    with np.load(target, allow_pickle=False) as saved:
        paths, embeddings = list(saved["paths"]), saved["embeddings"]
    readable = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg")
                      and not p.name.startswith(".") and str(p) not in broken)
    assert sorted(paths) == readable
    net = load_encoder(encoder)
    # decoded as the run decodes them: the 16-bit PNG among 8-bit files makes it a 16-bit RGB run (issue 19)
    fmt = meta_pixel_format(net.meta)
    assert fmt is not None and (fmt.channels, fmt.dtype) == (3, "uint16")
    images = torch.stack([eval_images(read_image(p, default_load_size(16), fmt).unsqueeze(0), 16)[0] for p in paths])
    with torch.no_grad():
        expected = net(images)
    assert embeddings.shape == tuple(expected.shape)
    np.testing.assert_allclose(embeddings, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_export_command_rebuilds_the_same_encoder(folder_run, tmp_path):
    from byol_wrap.job.cli import main

    _, out, encoder, _ = folder_run
    assert main(["export", str(out), "--out", str(tmp_path / "again.pt")]) == 0
    a = torch.load(encoder, weights_only=True)
    b = torch.load(tmp_path / "again.pt", weights_only=True)
    assert a["meta"] == b["meta"]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_dataset_and_module_inputs(tmp_path):
    """The BYOLTrainer counterpart: a torch Dataset of (image, label) pairs and an nn.Module."""
    torch.manual_seed(0)
    images = torch.rand(16, 3, 16, 16)
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(16))
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 5))
    path = pretrain(dataset, out=tmp_path / "run", model=net, hidden_layer=-2, steps=2, **SMALL)
    meta = torch.load(path, weights_only=True)["meta"]
    assert meta["model_spec"] is None and meta["representation_size"] == 8
    # the user's module itself was trained in place and is what was exported
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())


def test_full_disk_during_a_checkpoint_stops_and_keeps_the_last_one(tmp_path, monkeypatch):
    root = tmp_path / "images"
    write_images(root)
    out = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("format") == "byol-wrap-run":
            calls["n"] += 1
            if calls["n"] == 2:  # the second checkpoint: the disk is full half-way through
                f.write(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(TrainingStopped, match=r"No space left on device.*last checkpoint \(step 2\) is intact"):
        pretrain(root, out=out, steps=6, checkpoint_every=2, **SMALL)
    monkeypatch.setattr(torch, "save", real_save)
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 2 and not state["finished"]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["last.pt"], "no temporary file left behind"
    # the same call resumes from step 2 and finishes
    pretrain(root, out=out, steps=6, checkpoint_every=2, **SMALL)
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 6


def test_nan_loss_stops_without_touching_the_last_checkpoint(tmp_path, monkeypatch):
    import byol_wrap.core.byol

    data = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    out = tmp_path / "run"
    forward = byol_wrap.core.byol.BYOL.forward
    calls = {"n": 0}

    def diverging(self, x, *args, **kwargs):
        loss = forward(self, x, *args, **kwargs)
        if self.training and not kwargs.get("return_embedding") and not args:
            calls["n"] += 1
            if calls["n"] == 3:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(byol_wrap.core.byol.BYOL, "forward", diverging)
    with pytest.raises(TrainingStopped) as error:
        pretrain(data, out=out, steps=6, checkpoint_every=2, **SMALL)
    message = str(error.value)
    assert "step 3" in message and "nan" in message.lower() and "last good checkpoint" in message
    before = (out / "checkpoints" / "last.pt").read_bytes()
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["learner"].values()
               if isinstance(v, torch.Tensor) and v.is_floating_point())
    assert (out / "checkpoints" / "last.pt").read_bytes() == before


def test_collapse_metric_against_hand_computations():
    assert collapse_metric(torch.ones(8, 16)) == pytest.approx(0.0, abs=1e-7)
    # two opposite unit vectors along e1 in D=16: std over the batch (N-1) is sqrt(2) in one coordinate
    z = torch.zeros(2, 16)
    z[0, 0], z[1, 0] = 3.0, -5.0  # l2-normalisation makes them e1 and -e1
    assert collapse_metric(z) == pytest.approx(math.sqrt(2) / 16 * math.sqrt(16), rel=1e-6)
    # many random directions: each coordinate has std 1/sqrt(D), so the metric is ~1
    torch.manual_seed(0)
    assert collapse_metric(torch.randn(20000, 32)) == pytest.approx(1.0, abs=0.02)


def test_resume_decisions(tmp_path):
    assert compare_arguments({"lr": 0.1, "workers": 1}, {"lr": 0.1, "workers": 8}) == []
    assert compare_arguments({"lr": 0.1}, {"lr": 0.2}) == ["lr: 0.1 in the saved run, 0.2 now"]
    data = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    out = tmp_path / "run"
    pretrain(data, out=out, steps=1, **SMALL)
    with pytest.raises(RunError, match="finished run"):
        pretrain(data, out=out, steps=1, **SMALL)
    with pytest.raises(RunError, match=r"other arguments \(.*total_steps: 1 in the saved run, 2 now"):
        pretrain(data, out=out, steps=2, **SMALL)
    # --overwrite deletes the run's own files only
    (out / "my_notes.txt").write_text("keep me")
    (out / "plots" / "mine.png").write_bytes(b"keep me too")
    pretrain(data, out=out, steps=2, overwrite=True, **SMALL)
    assert (out / "my_notes.txt").read_text() == "keep me" and (out / "plots" / "mine.png").exists()
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 2
    assert resume_state(tmp_path / "elsewhere", {}, overwrite=False) is None


def test_encoder_without_checkpoint_is_not_replaced(tmp_path):
    data = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    out = tmp_path / "run"
    out.mkdir()
    (out / "encoder.pt").write_bytes(b"the user's earlier encoder")
    with pytest.raises(RunError, match="encoder.pt but no checkpoint"):
        pretrain(data, out=out, steps=1, **SMALL)
    assert (out / "encoder.pt").read_bytes() == b"the user's earlier encoder"


class ConstantNet(nn.Module):
    """Maps every image to the same learned vector: the projections of a batch are identical (collapsed)."""

    def __init__(self) -> None:
        super().__init__()
        self.vector = nn.Parameter(torch.randn(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vector.expand(x.shape[0], -1) + 0 * x.mean()


def test_a_collapsed_run_warns_loudly(tmp_path, capsys):
    data = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    pretrain(data, out=tmp_path / "run", model=ConstantNet(), hidden_layer=-1, steps=4, log_every=1,
             checkpoint_every=2, **SMALL)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["collapse"] < 1e-3 for row in rows)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "collapsing" in line]
    assert len(warnings) == 2, "once per checkpoint interval while it lasts"
    assert warnings[0].startswith("WARNING") and "step 1" in warnings[0] and "< 0.1" in warnings[0]


def test_the_builtin_default_is_not_shadowed_by_a_folder_named_digits(tmp_path, monkeypatch):
    """``byol-wrap pretrain --out digits`` (no DATA) trains on the built-in digits even though RUN_DIR, created
    first, is then a folder named ``digits`` in the working directory."""
    monkeypatch.chdir(tmp_path)
    pretrain(None, out="digits", steps=2, checkpoint_every=2, log_every=1, **SMALL)
    rows = [json.loads(line) for line in (tmp_path / "digits" / "metrics.jsonl").read_text().splitlines()]
    knn = [row["knn"] for row in rows if "knn" in row]
    assert len(knn) == 2 and all(0.0 <= value <= 1.0 for value in knn), rows
    state = torch.load(tmp_path / "digits" / "checkpoints" / "last.pt", weights_only=True)
    assert state["arguments"]["data"] == "digits", state["arguments"]


def test_the_logged_loss_goes_through_the_mean_over_ranks(tmp_path, monkeypatch):
    """metrics.jsonl logs ``_World.mean(loss)`` (the mean over torchrun's ranks; the loss itself alone).
    A stand-in mean that adds 100 shows the logged value is the mean's, not the local loss."""
    from byol_wrap.job import world

    calls = []

    def mean_plus_100(self, value):
        calls.append(value)
        return value + 100.0

    monkeypatch.setattr(world.World, "mean", mean_plus_100)
    root = tmp_path / "images"
    write_images(root)
    pretrain(root, out=tmp_path / "run", steps=3, checkpoint_every=3, log_every=1, **SMALL)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [row["loss"] for row in rows if "loss" in row]
    assert len(calls) == 3 and logged == [value + 100.0 for value in calls], (logged, calls)
    assert all(0.0 <= value <= 8.0 for value in calls), calls  # 2 - 2 cos, summed over both directions


def test_threads_apply_to_the_run_and_are_restored_after(tmp_path, capsys):
    before = torch.get_num_threads()
    seen = []
    original = torch.Tensor.backward

    def spy(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    torch.Tensor.backward = spy  # a test-local spy on torch, not on a user's module
    try:
        pretrain(out=tmp_path / "run", steps=8, threads=1, image_size=16, batch_size=8, projection_size=16,
                 projection_hidden_size=32, progress=True)
    finally:
        torch.Tensor.backward = original
    assert seen and set(seen) == {1}, seen
    assert torch.get_num_threads() == before
    out = capsys.readouterr().out
    assert "1 CPU thread(s)" in out
    assert "estimated time for the remaining 2 steps" in out, out  # printed after 1 + 5 steps of 8
    with pytest.raises(ValueError, match="--threads must be a positive integer"):
        pretrain(out=tmp_path / "bad", steps=2, threads=0, **SMALL)


def test_augmentation_plot_draws_a_seeded_sample_not_the_first_files(tmp_path):
    from byol_wrap.job.monitor import sample_images

    items = [(torch.full((1, 2, 2), i, dtype=torch.uint8), i, None) for i in range(100)]
    first = [int(x.max()) for x in sample_images(items, 8, seed=0)]
    assert first == [int(x.max()) for x in sample_images(items, 8, seed=0)]  # seeded: the same again
    assert first != list(range(8)), first  # not the first 8
    assert first != [int(x.max()) for x in sample_images(items, 8, seed=1)]
    unreadable = [(None, i, "bad") if i % 2 else item for i, item in enumerate(items)]
    assert all(int(x.max()) % 2 == 0 for x in sample_images(unreadable, 8, seed=0))
