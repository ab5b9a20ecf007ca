"""byol_wrap.job.encoder: encoder.pt round trip against the trained net's own forward (no hooks),
rebuild from specs, clear errors, embed rows = readable images = load_encoder outputs."""
import csv
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from byol_wrap import BYOL
from byol_wrap.job.data import default_load_size, read_image
from byol_wrap.job.encoder import embed_images, export_encoder, load_encoder
from byol_wrap.job.models import build_model, small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _trained(spec, image_size=16, steps=2, **kwargs):
    """A backbone after a few BYOL steps (BatchNorm statistics and weights moved)."""
    torch.manual_seed(0)
    net = build_model(spec, image_size=image_size)
    learner = BYOL(net, image_size=image_size, projection_size=8, projection_hidden_size=16, **kwargs)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.1)
    for _ in range(steps):
        loss = learner(torch.rand(4, 3, image_size, image_size))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        learner.update_moving_average()
    return net, learner


def _normalised(x):
    return (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_round_trip_small_cnn_from_a_learner(tmp_path):
    net, learner = _trained("byol_wrap/small_cnn:4", hidden_layer=-1)
    path = export_encoder(learner, tmp_path / "encoder.pt", model_spec="byol_wrap/small_cnn:4", steps=2)
    meta = torch.load(path, weights_only=True)["meta"]
    assert meta["model_spec"] == "byol_wrap/small_cnn:4" and meta["steps"] == 2 and meta["image_size"] == 16
    assert meta["representation_size"] == 32 and meta["hidden_layer"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.pt"]
    encoder = load_encoder(path)
    assert not encoder.training
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        expected = net.eval()(_normalised(x))  # the net's own forward, normalised by hand
        torch.testing.assert_close(encoder(x), expected)
        torch.testing.assert_close(encoder(x.float() / 255), expected)


def test_round_trip_resnet_avgpool(tmp_path):
    net, learner = _trained("torchvision/resnet18", image_size=32, steps=1, hidden_layer="avgpool")
    path = export_encoder(net, tmp_path / "encoder.pt", model_spec="torchvision/resnet18", hidden_layer=-2,
                          image_size=32, normalize=(MEAN, STD), representation_size=512, steps=1)
    assert torch.load(path, weights_only=True)["meta"]["hidden_layer"] == "avgpool"
    x = torch.rand(2, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        fc, net.fc = net.fc, nn.Identity()
        expected = net(_normalised(x * 255))
        net.fc = fc
        scale = float(expected.abs().max())  # tolerance relative to the features' magnitude
        torch.testing.assert_close(load_encoder(path)(x), expected, rtol=0, atol=1e-5 * scale)


def test_round_trip_timm_vit(tmp_path):
    pytest.importorskip("timm")
    net, learner = _trained("timm/vit_tiny_patch16_224", image_size=32, steps=1, hidden_layer=-1)
    path = export_encoder(learner, tmp_path / "e.pt", model_spec="timm/vit_tiny_patch16_224", steps=1)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(path)(x), net.eval()(_normalised(x * 255)), rtol=1e-5, atol=1e-5)


def test_user_callable_spec_and_model_argument(tmp_path):
    source = tmp_path / "my_net.py"
    source.write_text(textwrap.dedent("""
        from torch import nn
        def build():
            return nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(6, 10))
    """))
    spec = f"{source}:build"
    net = build_model(spec)
    path = export_encoder(net, tmp_path / "e.pt", model_spec=spec, hidden_layer=-2, image_size=8, normalize=None,
                          representation_size=6, steps=0)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        expected = net.eval()[:5](x)
        # a file never decides which code runs: the recorded spec is refused, the caller's own is built
        with pytest.raises(ValueError, match=r"not one of the built-in families.*pass model="):
            load_encoder(path)
        torch.testing.assert_close(load_encoder(path, model=spec)(x), expected)
    source.unlink()  # the spec cannot be built any more
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_encoder(path, model=spec)
    torch.testing.assert_close(load_encoder(path, model=build_model(nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(6, 10))))(x), expected)
    export_encoder(net, tmp_path / "m.pt", model_spec=None, hidden_layer=-2, image_size=8, normalize=None,
                   representation_size=6, steps=0)
    with pytest.raises(RuntimeError, match="pass model="):
        load_encoder(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="missing keys"):
        load_encoder(tmp_path / "m.pt", model=small_cnn(4))


def test_not_an_encoder(tmp_path):
    torch.save({"learner": {}, "optimizer": {}, "step": 3}, tmp_path / "last.pt")
    with pytest.raises(RuntimeError, match="training checkpoint: make the encoder with byol-wrap export"):
        load_encoder(tmp_path / "last.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:100])
    with pytest.raises(RuntimeError, match="truncated or foreign"):
        load_encoder(tmp_path / "cut.pt")
    with pytest.raises(TypeError, match="needs hidden_layer"):
        export_encoder(small_cnn(4), tmp_path / "x.pt", model_spec="byol_wrap/small_cnn:4", steps=0)
    with pytest.raises(TypeError, match="must hold only"):
        export_encoder(small_cnn(4), tmp_path / "x.pt", model_spec="byol_wrap/small_cnn:4", hidden_layer=-1,
                       image_size=8, normalize=None, representation_size=32, steps=0, extra={"f": object()})


def _folder(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "nested" / "deeper").mkdir(parents=True)
    names = ["a.png", "nested/b.jpg", "nested/deeper/c.png", "d.bmp", "e.png"]
    for i, name in enumerate(names):
        size = (20 + 3 * i, 24 - 2 * i)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / name)
    Image.new("RGBA", (30, 30), (0, 0, 0, 0)).save(root / "alpha.png")
    names.append("alpha.png")
    (root / "bad.jpg").write_text("not an image")
    (root / "nested" / "empty.png").touch()
    return sorted(str(root / n) for n in names)


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_embed_rows_are_the_readable_images(tmp_path, suffix):
    net, learner = _trained("byol_wrap/small_cnn:4", hidden_layer=-1)
    encoder_path = export_encoder(learner, tmp_path / "encoder.pt", model_spec="byol_wrap/small_cnn:4", steps=2)
    readable = _folder(tmp_path / "images")
    out = tmp_path / "out" / f"emb{suffix}"
    out.parent.mkdir()
    with pytest.warns(UserWarning, match="2 unreadable"):
        embed_images(encoder_path, tmp_path / "images", out, batch_size=4, workers=0, progress=False)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    if suffix == ".npz":
        with np.load(out, allow_pickle=False) as result:
            paths, embeddings = result["paths"].tolist(), torch.from_numpy(result["embeddings"])
    else:
        with open(out, newline="") as handle:
            rows = list(csv.reader(handle))
        assert rows[0][:2] == ["path", "e0"] and len(rows[0]) == 33
        paths = [r[0] for r in rows[1:]]
        embeddings = torch.tensor([[float(v) for v in r[1:]] for r in rows[1:]])
    assert sorted(paths) == readable and embeddings.shape == (len(readable), 32)
    # the same vectors as load_encoder on the same images (decoded at 18 px, centre 16 px)
    load = default_load_size(16)
    top = (load - 16) // 2
    images = torch.stack([read_image(p, load)[:, top:top + 16, top:top + 16] for p in paths])
    with torch.no_grad():
        torch.testing.assert_close(embeddings, load_encoder(encoder_path)(images), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(embeddings, net.eval()(_normalised(images)), rtol=1e-5, atol=1e-6)


def test_embed_errors(tmp_path):
    path = export_encoder(small_cnn(4), tmp_path / "e.pt", model_spec="byol_wrap/small_cnn:4", hidden_layer=-1,
                          image_size=8, normalize=None, representation_size=32, steps=0)
    with pytest.raises(ValueError, match=r"must end in \.npz or \.csv"):
        embed_images(path, "digits", tmp_path / "out.txt")
    with pytest.raises(FileNotFoundError):
        embed_images(path, tmp_path / "missing", tmp_path / "out.npz", progress=False)


def test_embed_of_a_folder_without_one_readable_image_is_an_error(tmp_path):
    net, learner = _trained("byol_wrap/small_cnn:4", hidden_layer=-1)
    encoder_path = export_encoder(learner, tmp_path / "encoder.pt", model_spec="byol_wrap/small_cnn:4", steps=2)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "bad.jpg").write_text("not an image")
    (tmp_path / "images" / "empty.png").touch()
    out = tmp_path / "emb.npz"
    with pytest.raises(ValueError, match=r"no readable image .* 2 file\(s\) could not be decoded"):
        embed_images(encoder_path, tmp_path / "images", out, batch_size=4, workers=0, progress=False)
    assert not out.exists()
