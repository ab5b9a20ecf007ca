"""byol_wrap.job.preprocess / Encoder.preprocess: encoder(preprocess(...)) reproduces the vectors ``embed`` writes,
for files of several kinds and sizes, for PIL images and numpy arrays, and with normalize= for encoder.net."""
from pathlib import Path

import numpy as np
import pytest
import torch

Image = pytest.importorskip("PIL.Image")

from byol_wrap.job.encoder import embed_images, export_encoder, load_encoder  # noqa: E402
from byol_wrap.job.models import small_cnn  # noqa: E402
from byol_wrap.job.preprocess import preprocess  # noqa: E402

from helpers import assert_close_scaled  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 20
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_encoder(small_cnn(4), tmp_path_factory.mktemp("enc") / "encoder.pt",
                          model_spec="byol_wrap/small_cnn:4", hidden_layer=-1, image_size=SIZE,
                          normalize=(MEAN, STD), representation_size=32, steps=0)


def _files(root: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (31, 47, 3), dtype=np.uint8)).save(root / "wide.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (60, 25, 3), dtype=np.uint8)).save(root / "sub" / "tall.png")
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), "L").save(root / "grey.png")
    Image.fromarray(rng.integers(0, 65536, (33, 33), dtype=np.uint16)).save(root / "deep16.png")
    rgba = rng.integers(0, 256, (26, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "alpha.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / "exact.bmp")


def test_reproduces_embed_vectors_for_files(encoder_path, tmp_path):
    _files(tmp_path / "images")
    embed_images(encoder_path, tmp_path / "images", tmp_path / "e.npz", batch_size=4, workers=0, progress=False)
    with np.load(tmp_path / "e.npz", allow_pickle=False) as data:
        paths, expected = data["paths"].tolist(), torch.from_numpy(data["embeddings"])
    assert len(paths) == 6
    encoder = load_encoder(encoder_path)
    with torch.no_grad():
        got = encoder(encoder.preprocess(paths))
        assert_close_scaled(got, expected, rtol=1e-5, msg="paths")
        # a folder gives embed's rows in embed's order
        assert_close_scaled(encoder(encoder.preprocess(tmp_path / "images")), expected, rtol=1e-5, msg="folder")
        # normalize=True: the backbone's own input, for encoder.net
        assert_close_scaled(encoder.net(encoder.preprocess(paths, normalize=True)), expected, rtol=1e-5,
                            msg="normalised input to encoder.net")


def test_reproduces_embed_for_pil_images_and_arrays(encoder_path, tmp_path):
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (27, 41, 3), dtype=np.uint8) for _ in range(3)]
    # embed of a torch Dataset of PIL images (its documented input) ...
    pil = [Image.fromarray(a) for a in arrays]
    embed_images(encoder_path, [(image, 0) for image in pil], tmp_path / "p.npz", workers=0, progress=False)
    with np.load(tmp_path / "p.npz", allow_pickle=False) as data:
        expected = torch.from_numpy(data["embeddings"])
    encoder = load_encoder(encoder_path)
    with torch.no_grad():
        assert_close_scaled(encoder(encoder.preprocess(pil)), expected, rtol=1e-5, msg="PIL")
    # ... and of a uint8 tensor batch at another size
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    embed_images(encoder_path, batch, tmp_path / "t.npz", workers=0, progress=False)
    with np.load(tmp_path / "t.npz", allow_pickle=False) as data:
        expected = torch.from_numpy(data["embeddings"])
    with torch.no_grad():
        assert_close_scaled(encoder(encoder.preprocess(batch)), expected, rtol=1e-5, msg="tensor batch")
        assert_close_scaled(encoder(preprocess(list(batch.float() / 255), SIZE)), expected, rtol=1e-5,
                            msg="float tensors")


def test_normalisation_by_hand_and_errors():
    x = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    got = preprocess(x, SIZE, normalize=(MEAN, STD))
    expected = (x.double() / 255 - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / \
        torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    assert_close_scaled(got, expected, rtol=1e-6)
    assert torch.equal(preprocess(x, SIZE), x)  # already at the size: unchanged, like embed
    with pytest.raises(TypeError, match="preprocess takes"):
        preprocess(3.5, SIZE)
    with pytest.raises(ValueError, match="no images"):
        preprocess([], SIZE)
