"""byol_wrap.job.data: discovery, decoding of every colour mode to RGB, skipped files with reasons,
strict mode, npz/digits/Dataset inputs, labelled kNN data, deterministic sharded loaders."""
import io
import os

import numpy as np
import pytest
import torch

from byol_wrap.job import data as D

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _touch(root, *names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def _jpeg_bytes(size=(40, 30), colour=(200, 30, 60)):
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- discovery
def test_find_images_nested_hidden_case_sorted(tmp_path):
    _touch(tmp_path, "b/z.JPG", "b/a.png", "a.jpeg", "c/d/e.TIFF", "c/d/f.tif", "g.WebP", "h.bmp",
           ".hidden.jpg", ".cache/x.jpg", "b/.secret/y.png", "notes.txt", "anim.gif", "jpg", "b/noext")
    found = [p.relative_to(tmp_path).as_posix() for p in D.find_images(tmp_path)]
    assert found == ["a.jpeg", "b/a.png", "b/z.JPG", "c/d/e.TIFF", "c/d/f.tif", "g.WebP", "h.bmp"]
    assert D.find_images(tmp_path / "h.bmp") == [tmp_path / "h.bmp"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.find_images(tmp_path / "missing")


def test_find_images_follows_symlinked_folders_once(tmp_path):
    _touch(tmp_path, "real/a.jpg")
    os.symlink(tmp_path / "real", tmp_path / "link")
    os.symlink(tmp_path, tmp_path / "real" / "loop")  # a cycle must not hang the scan
    names = [p.relative_to(tmp_path).as_posix() for p in D.find_images(tmp_path)]
    assert names.count("real/a.jpg") + names.count("link/a.jpg") == 1


def test_empty_folder_says_which_extensions(tmp_path):
    _touch(tmp_path, "readme.txt")
    with pytest.raises(ValueError, match=r"holds no images \(searched recursively for \.jpg, \.jpeg"):
        D.open_images(tmp_path, 32)
    with pytest.raises(FileNotFoundError):
        D.open_images(tmp_path / "missing", 32)


# ----------------------------------------------------------------------------- decoding
def _uniform(mode, value, size=(12, 9)):
    return Image.new(mode, size, value)


COLOUR_CASES = {
    "L": (lambda: _uniform("L", 100), (100, 100, 100)),
    "1": (lambda: _uniform("1", 1), (255, 255, 255)),
    "LA opaque": (lambda: _uniform("LA", (50, 255)), (50, 50, 50)),
    "RGBA opaque": (lambda: _uniform("RGBA", (10, 20, 30, 255)), (10, 20, 30)),
    "RGBA transparent": (lambda: _uniform("RGBA", (10, 20, 30, 0)), (255, 255, 255)),  # on white
    "P": (lambda: _uniform("RGB", (255, 0, 0)).convert("P", palette=Image.Palette.ADAPTIVE), (255, 0, 0)),
    "I;16": (lambda: Image.fromarray(np.full((9, 12), 257 * 100, dtype=np.uint16)), (100, 100, 100)),
    "I": (lambda: Image.fromarray(np.full((9, 12), 257 * 40, dtype=np.int32)), (40, 40, 40)),
    "CMYK": (lambda: _uniform("CMYK", (0, 0, 0, 0)), (255, 255, 255)),
}


@pytest.mark.parametrize("case", sorted(COLOUR_CASES))
def test_every_colour_mode_becomes_rgb(tmp_path, case):
    make, expected = COLOUR_CASES[case]
    image = make()
    path = tmp_path / ("image.tiff" if image.mode in ("CMYK", "I", "I;16") else "image.png")
    image.save(path)
    x = D.read_image(path, 8)
    assert x.dtype == torch.uint8 and x.shape == (3, 8, 8)
    assert torch.equal(x, torch.tensor(expected, dtype=torch.uint8).view(3, 1, 1).expand(3, 8, 8)), x[:, 0, 0]


def test_palette_with_transparency_index(tmp_path):
    image = Image.new("P", (6, 6), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    assert D.read_image(tmp_path / "p.png", 6)[:, 0, 0].tolist() == [0, 255, 0]


def test_short_side_resize_and_centre_crop(tmp_path):
    # 40 wide x 20 high: left half red, right half blue, a green 4-px band at each end
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    arr[:, :4] = arr[:, 36:] = (0, 255, 0)
    Image.fromarray(arr).save(tmp_path / "wide.png")
    x = D.read_image(tmp_path / "wide.png", 10)  # -> 20 x 10, centre 10 x 10 = source columns 10..30
    assert x.shape == (3, 10, 10)
    assert x[:, 5, 0].tolist() == [255, 0, 0] and x[:, 5, 9].tolist() == [0, 0, 255]
    assert int(x[1].max()) == 0  # the green ends are cropped away
    assert D.read_image(tmp_path / "wide.png", None).shape == (3, 20, 40)
    assert D.read_image(tmp_path / "wide.png", (10, 12)).shape == (3, 10, 12)


def test_every_image_size_decodes_at_every_load_size(tmp_path):
    """The centred crop box, computed in floating point, must stay inside the image: a box sticking out
    by 1e-14 made Pillow refuse a few percent of ordinary photo sizes ("box offset can't be negative")."""
    sizes = [(640, 480), (3000, 2000), (54, 52), (30, 31), (1199, 20)]
    sizes += [(int(w), int(h)) for w, h in np.random.default_rng(0).integers(20, 1200, size=(40, 2))]
    failed = []
    for width, height in sizes:
        path = tmp_path / f"{width}x{height}.png"
        Image.new("RGB", (width, height), (200, 100, 50)).save(path)
        for load_size in (37, 73, 110, 256, (40, 60)):
            try:
                image = D.read_image(path, load_size)
            except D.UnreadableImageError as error:
                failed.append((width, height, load_size, error.reason))
                continue
            expected = (load_size, load_size) if isinstance(load_size, int) else load_size
            assert image.shape == (3, *expected)
            assert image[:, expected[0] // 2, expected[1] // 2].tolist() == [200, 100, 50]
    assert not failed, failed


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (30, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    image.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert D.read_image(tmp_path / "rot.jpg", None).shape == (3, 30, 10)


def _broken_folder(root):
    """4 readable images (nested, PNG with alpha, grey) and 3 broken files."""
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(_jpeg_bytes())
    Image.new("RGBA", (20, 16), (0, 100, 0, 128)).save(root / "sub" / "alpha.png")
    Image.new("L", (16, 20), 77).save(root / "sub" / "grey.png")
    Image.new("RGB", (16, 16), (1, 2, 3)).save(root / "sub" / "c.bmp")
    (root / "truncated.jpg").write_bytes(_jpeg_bytes()[:300])
    (root / "text.jpg").write_text("this is not an image\n")
    (root / "empty.png").touch()
    return {str(root / "truncated.jpg"): "truncated", str(root / "text.jpg"): "UnidentifiedImageError",
            str(root / "empty.png"): "empty file"}


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_files_are_skipped_with_reasons(tmp_path, workers):
    broken = _broken_folder(tmp_path)
    dataset = D.open_images(tmp_path, 12)
    loader = D.make_loader(dataset, 3, workers=workers, seed=0, epoch=0, drop_last=False)
    seen, skipped = [], []
    for batch in loader:
        assert batch.images.dtype == torch.uint8 and batch.images.shape[1:] == (3, 12, 12)
        assert len(batch.images) == len(batch.indices)
        seen += batch.indices.tolist()
        skipped += batch.skipped
    loader.close()
    readable = {i for i, p in enumerate(dataset.paths) if p not in broken}
    assert sorted(seen) == sorted(readable) and len(readable) == 4
    assert {path for path, _ in skipped} == set(broken)
    for path, reason in skipped:
        assert broken[path].lower() in reason.lower(), (path, reason)


def test_decompression_bomb_is_skipped(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "bomb.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px > 2x the limit: Pillow refuses
    dataset = D.open_images(tmp_path, 8)
    batch = next(iter(D.make_loader(dataset, 2, workers=0, drop_last=False)))
    assert len(batch.images) == 1
    (path, reason), = batch.skipped
    assert path.endswith("bomb.png") and "decompression bomb" in reason


def test_strict_stops_at_the_first_unreadable_file(tmp_path):
    _broken_folder(tmp_path)
    dataset = D.open_images(tmp_path, 12, strict=True)
    with pytest.raises(D.UnreadableImageError, match=r"cannot decode .*(truncated|text|empty)"):
        for _ in D.make_loader(dataset, 2, workers=0, shuffle=False, drop_last=False):
            pass


# ----------------------------------------------------------------------------- other inputs
def test_npz_input(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (10, 6, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x)
    dataset = D.open_images(tmp_path / "d.npz", 99)  # in-memory arrays keep their size
    assert torch.equal(dataset.images, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert dataset.describe(3) == "d.npz:x_train[3]"
    np.savez(tmp_path / "f.npz", x_train=x.astype(np.float32))
    with pytest.raises(ValueError, match="must be uint8"):
        D.open_images(tmp_path / "f.npz", 8)
    np.savez(tmp_path / "k.npz", images=x)
    with pytest.raises(ValueError, match=r"no 'x_train' array \(it has: images\)"):
        D.open_images(tmp_path / "k.npz", 8)
    np.savez(tmp_path / "o.npz", x_train=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="without pickle"):
        D.open_images(tmp_path / "o.npz", 8)
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a readable .npz"):
        D.open_images(tmp_path / "bad.npz", 8)


def test_digits_input_and_labelled_split():
    dataset = D.open_images("digits", 16)
    assert dataset.images.shape == (1438, 3, 16, 16) and dataset.images.dtype == torch.uint8
    bank_x, bank_y, query_x, query_y = D.load_labelled("digits", 16)
    assert len(bank_x) + len(query_x) == 1797 and torch.equal(bank_x, dataset.images)
    assert set(bank_y.tolist()) == set(query_y.tolist()) == set(range(10))
    # grey digits: the three channels are equal, the background black, the strokes bright
    assert torch.equal(bank_x[:, 0], bank_x[:, 2]) and int(bank_x.max()) > 200 and int(bank_x[:, :, 0, 0].max()) == 0


class _Images(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        if self.items[i] == "boom":
            raise OSError("disk error")
        return self.items[i]


def test_user_dataset_items():
    float_img = torch.rand(3, 8, 8)
    items = [(float_img, 0), torch.full((3, 8, 8), 7, dtype=torch.uint8), torch.zeros(1, 8, 8),
             torch.rand(3, 16, 16), "boom"]
    dataset = D.open_images(_Images(items), None)
    assert torch.equal(dataset[0][0], (float_img * 255).round().to(torch.uint8))
    assert dataset[1][0][:, 0, 0].tolist() == [7, 7, 7]
    assert dataset[2][0].shape == (3, 8, 8)
    assert dataset[3][0].shape == (3, 8, 8)  # resized to the first item's size, so batches collate
    image, index, reason = dataset[4]
    assert image is None and index == 4 and "disk error" in reason
    pil = D.open_images(_Images([Image.new("RGB", (30, 20), (9, 8, 7))] * 2), 10)
    assert pil[1][0].shape == (3, 10, 10) and pil[1][0][:, 0, 0].tolist() == [9, 8, 7]
    with pytest.raises(TypeError, match="Dataset items must be images"):
        D.open_images(_Images(["text"]), 8)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        D.open_images(_Images([torch.full((3, 4, 4), 200.0)]), 8)


def test_labelled_folder_and_npz(tmp_path):
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for name, colour in colours.items():
        for i in range(5):
            (tmp_path / "pets" / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20 + i, 18), colour).save(tmp_path / "pets" / name / f"{i}.png")
    (tmp_path / "pets" / "dog" / "broken.jpg").write_text("x")
    with pytest.warns(UserWarning, match="1 unreadable"):
        bank_x, bank_y, query_x, query_y = D.load_labelled(tmp_path / "pets", 8, workers=0)
    assert bank_x.shape[1:] == (3, 8, 8) and len(bank_x) + len(query_x) == 10 and len(query_x) == 2
    for x, y in ((bank_x, bank_y), (query_x, query_y)):
        for image, label in zip(x, y):  # labels follow the sorted class folders: cat=0 (red), dog=1 (blue)
            assert image[:, 4, 4].tolist() == list(colours[["cat", "dog"][label]])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (20, 8, 8, 3), dtype=np.uint8)
    y = np.arange(20) % 2
    np.savez(tmp_path / "l.npz", x_train=x, y_train=y)
    bx, by, qx, qy = D.load_labelled(tmp_path / "l.npz", 8)
    assert len(bx) + len(qx) == 20 and len(qx) == 4
    again = D.load_labelled(tmp_path / "l.npz", 8)
    assert torch.equal(again[2], qx)  # deterministic split
    np.savez(tmp_path / "t.npz", x_train=x, y_train=y, x_test=x[:3], y_test=y[:3])
    bx, by, qx, qy = D.load_labelled(tmp_path / "t.npz", 8)
    assert len(bx) == 20 and torch.equal(qy, torch.from_numpy(y[:3]))


# ----------------------------------------------------------------------------- loaders
def _epoch(dataset, rank, world_size, epoch, drop_last=True, skip=0, batch_size=4):
    loader = D.make_loader(dataset, batch_size, workers=0, seed=7, epoch=epoch, rank=rank, world_size=world_size,
                           drop_last=drop_last, skip_batches=skip)
    return [b.indices.tolist() for b in loader]


def test_sharded_epochs_partition_the_data():
    dataset = D.open_images(torch.zeros(96, 3, 2, 2, dtype=torch.uint8), None)
    shards = [sum(_epoch(dataset, r, 3, epoch=0, drop_last=False), []) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(96))  # union = the epoch, no overlap
    assert shards == [sum(_epoch(dataset, r, 3, epoch=0, drop_last=False), []) for r in range(3)]  # repeatable
    assert shards != [sum(_epoch(dataset, r, 3, epoch=1, drop_last=False), []) for r in range(3)]  # reshuffled
    # drop_last: whole batches only, still disjoint across ranks
    dataset = D.open_images(torch.zeros(101, 3, 2, 2, dtype=torch.uint8), None)
    batches = [_epoch(dataset, r, 2, epoch=3) for r in range(2)]
    assert all(len(b) == 4 for rank in batches for b in rank) and len(batches[0]) == D.batches_per_epoch(101, 4, 2)
    flat = sum(sum(batches, []), [])
    assert len(flat) == len(set(flat)) == 2 * 12 * 4


def test_order_matches_distributed_sampler():
    from torch.utils.data.distributed import DistributedSampler

    dataset = D.open_images(torch.zeros(40, 3, 2, 2, dtype=torch.uint8), None)
    for rank in range(2):
        sampler = DistributedSampler(range(40), num_replicas=2, rank=rank, shuffle=True, seed=7)
        sampler.set_epoch(5)
        assert sum(_epoch(dataset, rank, 2, epoch=5, batch_size=5), []) == list(sampler)


def test_skip_batches_resumes_mid_epoch(tmp_path):
    dataset = D.open_images(torch.zeros(30, 3, 2, 2, dtype=torch.uint8), None)
    full = _epoch(dataset, 0, 1, epoch=2)
    assert _epoch(dataset, 0, 1, epoch=2, skip=3) == full[3:]
    for i in range(6):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / f"{i}.png")
    files = D.open_images(tmp_path, 4)
    loader = D.make_loader(files, 2, workers=1, seed=1, epoch=0)
    first = [b.indices.tolist() for b in loader]
    loader.set_epoch(0, skip_batches=1)
    assert [b.indices.tolist() for b in loader] == first[1:]  # same persistent workers, resumed position
    loader.set_epoch(1)
    assert len(list(loader)) == 3
    loader.close()


def test_batch_larger_than_the_data():
    dataset = D.open_images(torch.zeros(5, 3, 2, 2, dtype=torch.uint8), None)
    with pytest.raises(ValueError, match=r"batch size 8 is larger than the data set: 5 images"):
        D.make_loader(dataset, 8)


def test_eval_images():
    x = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    assert D.eval_images(x, 32) is x
    assert D.eval_images(x, 16).shape == (2, 3, 16, 16)
    assert D.default_load_size(224) == 256 and D.default_load_size(32) == 37
    assert 1 <= D.default_workers() <= 4


def test_continuous_loader_runs_across_epochs_without_restarting(tmp_path):
    for i in range(10):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / f"{i}.png")
    files = D.open_images(tmp_path, 4)
    def fresh(epoch, skip=0):
        loader = D.make_loader(files, 3, workers=0, seed=4, epoch=epoch, skip_batches=skip, continuous=False)
        return [b.indices.tolist() for b in loader]

    loader = D.make_loader(files, 3, workers=1, seed=4, epoch=0)
    seen = []
    for epoch in range(3):  # the trainer's pattern: set_epoch, iterate the epoch, next epoch
        loader.set_epoch(epoch)
        seen.append([b.indices.tolist() for b in loader])
    assert seen == [fresh(0), fresh(1), fresh(2)] and loader.restarts == 1  # one stream, 3 epochs
    loader.set_epoch(3)
    iterator = iter(loader)
    first = next(iterator).indices.tolist()
    del iterator  # abandoned mid-epoch (a run stopping at its last step)...
    loader.set_epoch(3, skip_batches=1)  # ...and resumed right there: same stream
    assert [first] + [b.indices.tolist() for b in loader] == fresh(3) and loader.restarts == 1
    loader.set_epoch(7, skip_batches=2)  # any other position restarts the queue there
    assert [b.indices.tolist() for b in loader] == fresh(7, 2) and loader.restarts == 2
    loader.close()
