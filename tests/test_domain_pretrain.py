"""The command on domain imagery (issue 19): 1- and 4-channel runs end to end, statistics in encoder.pt and
used by embed, files that do not fit skipped with the reason, mixed folders an error, C-channel models.

Expected statistics and embeddings are computed here from the arrays the test wrote (numpy, by hand),
not read back from the code under test."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from byol_wrap import pretrain
from byol_wrap.job.cli import main
from byol_wrap.job.encoder import embed_images, load_encoder
from byol_wrap.job.models import build_model

tifffile = pytest.importorskip("tifffile")
Image = pytest.importorskip("PIL.Image")
pytestmark = pytest.mark.usefixtures("one_thread")

SIDE = 18  # the load size of 16 px views (16 x 8 / 7, rounded): files of this size are not resampled
FAST = dict(model="byol_wrap/small_cnn:4", image_size=16, batch_size=8, steps=2, projection_size=16,
            projection_hidden_size=32, workers=0, progress=False, device="cpu")


def _grey16_folder(root, count=12, seed=0):
    rng = np.random.default_rng(seed)
    arrays = rng.integers(0, 4096, size=(count, SIDE, SIDE), dtype=np.uint16)  # 12-bit data in 16-bit PNG
    root.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(root / f"{i:02d}.png")
    return arrays


def _bands_folder(root, count=12, bands=4, seed=1):
    rng = np.random.default_rng(seed)
    arrays = rng.integers(0, 65536, size=(count, bands, SIDE, SIDE), dtype=np.uint16)
    root.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        tifffile.imwrite(root / f"{i:02d}.tif", a, photometric="minisblack", planarconfig="separate")
    return arrays


def _stats(arrays: np.ndarray, scale: float):
    x = arrays.astype(np.float64) / scale
    if x.ndim == 3:
        x = x[:, None]
    return x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))


def _assert_embedded_by_hand(encoder_path, embeddings, arrays, scale, mean, std):
    """By hand: the centre 16 px of the 18 px files, / scale, (x - mean) / std, the backbone."""
    encoder = load_encoder(encoder_path)
    x = torch.from_numpy(arrays[:, :, 1:17, 1:17].astype(np.float32) / scale)
    x = (x - torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)) / torch.tensor(
        std, dtype=torch.float32).view(1, -1, 1, 1)
    with torch.no_grad():
        expected = encoder.net(x)
    size = float(expected.abs().max())
    assert torch.allclose(embeddings, expected, rtol=1e-4, atol=1e-4 * size), (embeddings - expected).abs().max()


def test_one_channel_16_bit_run_end_to_end(tmp_path):
    arrays = _grey16_folder(tmp_path / "xray")
    encoder_path = pretrain(str(tmp_path / "xray"), out=tmp_path / "run", **FAST)
    meta = torch.load(encoder_path, weights_only=True)["meta"]
    assert meta["channels"] == 1 and meta["pixel_format"] == {"channels": 1, "dtype": "uint16", "scale": 65535.0}
    mean, std = _stats(arrays, 65535.0)
    np.testing.assert_allclose(meta["normalize"][0], mean, rtol=1e-5)
    np.testing.assert_allclose(meta["normalize"][1], std, rtol=1e-5)
    assert (tmp_path / "run" / "plots" / "augmentations.png").stat().st_size > 0
    encoder = load_encoder(encoder_path)
    assert next(m for m in encoder.net.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == 1


def test_four_channel_run_and_embed_apply_the_runs_statistics(tmp_path):
    arrays = _bands_folder(tmp_path / "cells")
    encoder_path = pretrain(str(tmp_path / "cells"), out=tmp_path / "run", **FAST)
    meta = torch.load(encoder_path, weights_only=True)["meta"]
    assert meta["channels"] == 4
    mean, std = _stats(arrays, 65535.0)
    np.testing.assert_allclose(meta["normalize"][0], mean, rtol=1e-5)
    out = embed_images(encoder_path, str(tmp_path / "cells"), tmp_path / "e.npz", workers=0, progress=False)
    with np.load(out, allow_pickle=False) as npz:
        embeddings, paths = torch.from_numpy(npz["embeddings"]), list(npz["paths"])
    assert len(paths) == 12
    _assert_embedded_by_hand(encoder_path, embeddings, arrays, 65535.0, mean, std)


@pytest.mark.parametrize("kind", ["grey PNG", "4-band TIFF"])
def test_8_bit_runs_other_than_rgb_get_statistics_of_x_over_255(tmp_path, kind):
    """The learner divides uint8 by 255 before it normalises, so the statistics must be of x / 255 too
    (they were of the raw 0-255 values: mean ~122, std ~60, which squashed every image to a constant)."""
    rng = np.random.default_rng(5)
    root = tmp_path / "data"
    root.mkdir()
    arrays = rng.integers(0, 256, size=(12, 1 if kind == "grey PNG" else 4, SIDE, SIDE), dtype=np.uint8)
    for i, a in enumerate(arrays):
        if kind == "grey PNG":
            Image.fromarray(a[0]).save(root / f"{i:02d}.png")
        else:
            tifffile.imwrite(root / f"{i:02d}.tif", a, photometric="minisblack", planarconfig="separate")
    encoder_path = pretrain(str(root), out=tmp_path / "run", **FAST)
    meta = torch.load(encoder_path, weights_only=True)["meta"]
    assert meta["pixel_format"] == {"channels": arrays.shape[1], "dtype": "uint8", "scale": 255.0}, meta
    mean, std = _stats(arrays, 255.0)
    np.testing.assert_allclose(meta["normalize"][0], mean, rtol=1e-5)
    np.testing.assert_allclose(meta["normalize"][1], std, rtol=1e-5)
    out = embed_images(encoder_path, str(root), tmp_path / "e.npz", workers=0, progress=False)
    with np.load(out, allow_pickle=False) as npz:
        embeddings = torch.from_numpy(npz["embeddings"])
    _assert_embedded_by_hand(encoder_path, embeddings, arrays, 255.0, mean, std)


def test_eight_band_file_in_rgb_run_and_corrupt_tiff_are_skipped_with_the_reason(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(2)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8), "RGB").save(photos / f"{i:02d}.png")
    tifffile.imwrite(photos / "zz_bands.tif", rng.integers(0, 65536, (8, SIDE, SIDE), dtype=np.uint16),
                     photometric="minisblack", planarconfig="separate")
    tifffile.imwrite(photos / "zz_corrupt.tif", rng.integers(0, 65536, (3, SIDE, SIDE), dtype=np.uint16),
                     photometric="rgb", planarconfig="separate")
    data = (photos / "zz_corrupt.tif").read_bytes()
    (photos / "zz_corrupt.tif").write_bytes(data[: len(data) // 4])
    pretrain(str(photos), out=tmp_path / "run", **{**FAST, "steps": 3})
    skipped = dict(line.split("\t") for line in (tmp_path / "run" / "skipped.txt").read_text().splitlines())
    reason = skipped[str(photos / "zz_bands.tif")]
    assert "8 channels" in reason and "--channels 8" in reason
    assert skipped[str(photos / "zz_corrupt.tif")]


def test_mixed_channel_counts_are_one_line_and_exit_2(tmp_path, capsys):
    _grey16_folder(tmp_path / "mixed", count=6)
    _bands_folder(tmp_path / "mixed", count=6)
    code = main(["pretrain", str(tmp_path / "mixed"), "--out", str(tmp_path / "run"), "--steps", "1",
                 "--image-size", "16", "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "mixed channel counts" in err and "--channels N" in err


def test_user_model_that_does_not_take_the_channels_fails_naming_them(tmp_path):
    _bands_folder(tmp_path / "cells", count=8)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.raises(ValueError, match="4 channel"):
        pretrain(str(tmp_path / "cells"), out=tmp_path / "run", **{**FAST, "model": net, "hidden_layer": -1})


def test_rgb_weights_adapted_into_a_one_channel_torchvision_net(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    rgb = torchvision.models.resnet18(weights=None)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pt")
    notes = []
    grey = build_model("torchvision/resnet18", weights=tmp_path / "rgb.pt", channels=1, notes=notes)
    torch.testing.assert_close(grey.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(grey.layer1[0].conv1.weight, rgb.layer1[0].conv1.weight)
    assert any("rebuilt for 1 input channels" in n for n in notes) and any("adapted" in n for n in notes)


def test_timm_model_built_with_in_chans():
    pytest.importorskip("timm")
    net = build_model("timm/resnet18", channels=13)
    assert next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == 13


def test_knn_monitor_reads_class_folders_in_the_runs_format(tmp_path):
    _grey16_folder(tmp_path / "train", count=10)
    for label in ("a", "b"):
        _grey16_folder(tmp_path / "knn" / label, count=5, seed=ord(label))
    pretrain(str(tmp_path / "train"), out=tmp_path / "run", knn_data=str(tmp_path / "knn"), **FAST)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["knn"] for r in rows if "knn" in r], rows
    assert not (tmp_path / "run" / "skipped.txt").exists()


def test_augmentation_figure_shows_grey_colour_and_false_colour():
    from byol_wrap.job.monitor import display_images

    grey = torch.rand(2, 1, 4, 4) * 0.0625  # 12-bit data in 16-bit files, as floats
    shown, caption = display_images([grey, grey], stretch=True)
    assert "grey" in caption and shown[0].shape == (2, 4, 4, 3)
    assert torch.equal(shown[0][..., 0], shown[0][..., 1]) and torch.equal(shown[0][..., 1], shown[0][..., 2])
    flat = grey.flatten()
    lo, hi = torch.quantile(flat, 0.005), torch.quantile(flat, 0.995)
    torch.testing.assert_close(shown[0][..., 0], ((grey[:, 0] - lo) / (hi - lo)).clamp(0, 1))
    bands = torch.rand(2, 13, 4, 4)
    shown, caption = display_images([bands], stretch=False)
    assert "channels 1-3 of 13" in caption and "false colour" in caption
    torch.testing.assert_close(shown[0], bands[:, :3].permute(0, 2, 3, 1))
    assert "colour (R, G, B)" in display_images([torch.rand(1, 3, 2, 2)], stretch=False)[1]
