"""byol_wrap.job.neighbours: neighbours against a brute-force search written out here, the seed's choice, the PNG."""

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from byol_wrap.job.encoder import export_encoder  # noqa: E402
from byol_wrap.job.models import small_cnn  # noqa: E402
from byol_wrap.job.neighbours import draw_neighbours, nearest_neighbours, sample_images  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_nearest_neighbours_by_brute_force():
    features = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    queries = torch.tensor([0, 7, 29])
    got = nearest_neighbours(features, queries, k=4)
    for row, q in zip(got.tolist(), queries.tolist()):
        sims = []
        for j in range(30):
            if j != q:
                a, b = features[q].tolist(), features[j].tolist()
                dot = sum(x * y for x, y in zip(a, b))
                sims.append((dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5), j))
        assert row == [j for _, j in sorted(sims, reverse=True)[:4]]
    assert nearest_neighbours(features[:3], torch.tensor([1]), k=10).shape == (1, 2)  # k clipped to the others


def test_sample_images_is_fixed_by_the_seed(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (18, 22, 3), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    a, names_a = sample_images(tmp_path, 16, count=5, seed=3, workers=0)
    b, names_b = sample_images(tmp_path, 16, count=5, seed=3, workers=0)
    c, names_c = sample_images(tmp_path, 16, count=5, seed=4, workers=0)
    assert a.shape == (5, 3, 16, 16) and names_a == names_b and torch.equal(a, b) and names_c != names_a
    assert names_a == sorted(names_a)
    with pytest.raises(ValueError, match="at least 2"):
        sample_images(tmp_path / "00.png", 16)


def test_draw_neighbours_writes_the_png(tmp_path):
    path = export_encoder(small_cnn(4), tmp_path / "encoder.pt", model_spec="byol_wrap/small_cnn:4", hidden_layer=-1,
                          image_size=16, normalize=None, representation_size=32, steps=0)
    out = draw_neighbours(path, "digits", tmp_path / "plots" / "neighbours.png", queries=3, k=4, max_images=200)
    assert out == tmp_path / "plots" / "neighbours.png"
    assert sorted(p.name for p in out.parent.iterdir()) == ["neighbours.png"]
    with Image.open(out) as image:
        width, height = image.size
    assert width > 2.5 * height > 0  # two panels of 1 + 4 columns, 3 rows
