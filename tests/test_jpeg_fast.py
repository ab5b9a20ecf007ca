"""The simplejpeg path of read_image gives Pillow's pixels to the bit (the documented tolerance is zero)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from byol_wrap.job.data import decode as decode_module
from byol_wrap.job.data import read_image
from byol_wrap.job.data.jpeg import decode_jpeg_whole, draft_reduces

pytest.importorskip("simplejpeg")
from PIL import Image  # noqa: E402


def _photo(seed: int, size, mode: str = "RGB") -> Image.Image:
    g = np.random.default_rng(seed)
    low = g.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(low).resize(size, Image.BICUBIC)
    noise = g.integers(-12, 13, (size[1], size[0], 3))
    image = Image.fromarray(np.clip(np.asarray(image).astype(int) + noise, 0, 255).astype(np.uint8))
    return image.convert(mode)


@pytest.mark.parametrize("options", [
    dict(quality=90), dict(quality=95, subsampling=0), dict(quality=75, progressive=True), dict(quality=90, mode="L"),
    dict(quality=85, subsampling=1, size=(61, 47)),
])
def test_fast_path_is_bit_identical_to_pillow(tmp_path, monkeypatch, options):
    options = dict(options)
    mode, size = options.pop("mode", "RGB"), options.pop("size", (50, 37))
    path = str(tmp_path / "a.jpg")
    _photo(len(str(options)), size, mode).save(path, **options)
    with Image.open(path) as image:
        assert not draft_reduces(image.size, (32, 32))
        assert decode_jpeg_whole(path, image, (32, 32)) is not None  # the fast path is taken
    fast = read_image(path, 32)
    monkeypatch.setattr(decode_module, "decode_jpeg_whole", lambda *args: None)  # Pillow only
    pillow = read_image(path, 32)
    assert fast.shape == pillow.shape == (3, 32, 32)
    assert torch.equal(fast, pillow), f"{(fast.int() - pillow.int()).abs().max()} max difference"


def test_truncated_exif_and_large_files_go_to_pillow(tmp_path):
    whole = tmp_path / "whole.jpg"
    _photo(1, (50, 40)).save(whole, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) * 2 // 3])
    with Image.open(cut) as image:
        assert decode_jpeg_whole(str(cut), image, (32, 32)) is None
    with pytest.raises(Exception, match="truncated|cannot decode"):
        read_image(cut, 32)
    large = tmp_path / "large.jpg"
    _photo(2, (90, 80)).save(large, quality=90)
    with Image.open(large) as image:
        assert decode_jpeg_whole(str(large), image, (32, 32)) is None  # draft shrinks it: Pillow is faster
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    _photo(3, (50, 40)).save(rotated, quality=90, exif=exif)
    with Image.open(rotated) as image:
        assert decode_jpeg_whole(str(rotated), image, (32, 32)) is None
    assert read_image(rotated, None).shape == (3, 50, 40)  # EXIF orientation applied by Pillow
