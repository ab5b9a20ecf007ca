"""Issue 21's paths for encoders of other channel counts and sample types (1-channel 16-bit PNG, 4-band 16-bit TIFF,
13-band float .npy): Encoder.preprocess reproduces embed's vectors, eval's kNN matches a hand-written kNN on embed's
vectors, neighbours.png shows 1 channel grey and more as false colour, the ONNX export takes C-channel float input
x / scale and onnxruntime reproduces embed's vectors, safetensors keeps the metadata, timm/torchvision load the
C-channel first convolution."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

Image = pytest.importorskip("PIL.Image")
tifffile = pytest.importorskip("tifffile")

from byol_wrap.job.data.channels import detect_format, meta_pixel_format  # noqa: E402
from byol_wrap.job.data.discovery import find_image_paths  # noqa: E402
from byol_wrap.job.encoder import embed_images, export_encoder, load_encoder  # noqa: E402
from byol_wrap.job.models import build_model, small_cnn  # noqa: E402

from helpers import assert_close_scaled  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 16
SHAPES = [(23, 31), (40, 19), (16, 16), (27, 27)]


def _grey16(path: Path, rng, level: int = 0) -> None:
    """1-channel 16-bit PNGs, values spread over 12 bits (a microscope's range) plus a class offset."""
    path.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(SHAPES):
        pixels = (rng.integers(0, 4096, (h, w)) + level).astype(np.uint16)
        Image.fromarray(pixels).save(path / f"g{i}.png")


def _bands4(path: Path, rng, level: int = 0) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(SHAPES):
        pixels = (rng.integers(0, 30000, (4, h, w)) + level).astype(np.uint16)
        tifffile.imwrite(path / f"b{i}.tif", pixels, photometric="minisblack", planarconfig="separate")


def _bands13(path: Path, rng, level: float = 0.0) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(SHAPES):
        np.save(path / f"s{i}.npy", (rng.standard_normal((13, h, w)) * 300 + 1000 + level).astype(np.float32))


MAKERS = {"grey16": (_grey16, 1), "tiff4": (_bands4, 4), "npy13": (_bands13, 13)}


def _encoder(folder: Path, paths, spec: str = "small_cnn", seed: int = 0) -> Path:
    """An encoder of the files' format (as pretrain records it), with per-channel statistics unlike 0/1."""
    fmt, _ = detect_format(paths)
    channels = fmt.channels
    torch.manual_seed(seed)
    if spec == "small_cnn":
        net, model_spec, layer = small_cnn(4, channels), "byol_wrap/small_cnn:4", -1
    else:
        net, model_spec = build_model(spec, image_size=SIZE, channels=channels), spec
        layer = "avgpool" if spec.startswith("torchvision/") else None
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
    mean = [0.05 * (c + 1) for c in range(channels)]
    std = [0.1 + 0.02 * c for c in range(channels)]
    if fmt.dtype == "float32":
        mean, std = [1000.0] * channels, [300.0] * channels
    return export_encoder(net, folder / "encoder.pt", model_spec=model_spec, hidden_layer=layer, image_size=SIZE,
                          normalize=(mean, std), representation_size=0, steps=0,
                          extra={"channels": channels, "pixel_format": fmt.as_dict()})


def _embed(encoder: Path, data: Path, out: Path):
    embed_images(encoder, data, out, batch_size=3, workers=0, progress=False)
    with np.load(out, allow_pickle=False) as npz:
        return npz["paths"].tolist(), torch.from_numpy(npz["embeddings"])


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_preprocess_reproduces_embed(kind, tmp_path):
    make, channels = MAKERS[kind]
    make(tmp_path / "images", np.random.default_rng(0))
    encoder_path = _encoder(tmp_path, find_image_paths(tmp_path / "images"))
    paths, expected = _embed(encoder_path, tmp_path / "images", tmp_path / "e.npz")
    encoder = load_encoder(encoder_path)
    assert encoder.meta["channels"] == channels
    with torch.no_grad():
        batch = encoder.preprocess(paths)
        assert batch.shape == (len(SHAPES), channels, SIZE, SIZE)
        assert batch.dtype == {"grey16": torch.uint16, "tiff4": torch.uint16, "npy13": torch.float32}[kind]
        assert_close_scaled(encoder(batch), expected, rtol=1e-5, msg=f"{kind} paths")
        assert_close_scaled(encoder(encoder.preprocess(tmp_path / "images")), expected, rtol=1e-5, msg="folder")
        # normalize=True: the backbone's own input, computed here by hand from the samples
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in encoder.meta["normalize"])
        by_hand = (batch.float() / encoder.meta["pixel_format"]["scale"] - mean) / std
        assert_close_scaled(encoder.preprocess(paths, normalize=True), by_hand, rtol=1e-6, msg="normalised")
        assert_close_scaled(encoder.net(by_hand), expected, rtol=1e-5, msg="encoder.net")
        # arrays in the files' own sample type, as (C, H, W) tensors
        arrays = [torch.from_numpy(np.load(p)) if p.endswith(".npy") else
                  torch.from_numpy(np.asarray(Image.open(p)).astype(np.uint16)).unsqueeze(0) if p.endswith(".png")
                  else torch.from_numpy(tifffile.imread(p)) for p in paths]
        assert_close_scaled(encoder(encoder.preprocess(arrays)), expected, rtol=1e-5, msg="tensors")
    with pytest.raises(ValueError, match=f"takes {channels}-channel"):
        encoder.preprocess(torch.zeros(channels + 1, 8, 8, dtype=batch.dtype))


def _labelled(root: Path, make, rng) -> None:
    for split in ("train", "test"):
        for label, level in (("dim", 0), ("bright", 2000)):
            make(root / split / label, rng, level)


def _knn_by_hand(bank, bank_labels, queries, k, classes, temperature=0.1):
    bank = bank / bank.norm(dim=1, keepdim=True)
    queries = queries / queries.norm(dim=1, keepdim=True)
    predicted = []
    for q in queries:
        s = bank @ q
        top = s.argsort(descending=True)[:min(k, len(bank))]
        votes = torch.zeros(classes, dtype=torch.float64)
        for i in top.tolist():
            votes[bank_labels[i]] += float(torch.exp(s[i].double() / temperature))
        predicted.append(int(votes.argmax()))
    return predicted


@pytest.mark.parametrize("kind", ["grey16", "tiff4"])
def test_eval_matches_a_hand_written_knn_on_embed_vectors(kind, tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from byol_wrap.job.cli import main

    make, channels = MAKERS[kind]
    _labelled(tmp_path, make, np.random.default_rng(1))
    encoder_path = _encoder(tmp_path, find_image_paths(tmp_path / "train"))
    out = tmp_path / "eval" / "report.json"
    code = main(["eval", str(encoder_path), str(tmp_path / "train"), "--test", str(tmp_path / "test"),
                 "--out", str(out), "--workers", "0", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["pixel_format"]["channels"] == channels and (out.parent / "confusion.png").exists()
    classes = report["classes"]
    assert classes == ["bright", "dim"]
    _, bank = _embed(encoder_path, tmp_path / "train", tmp_path / "train.npz")
    test_paths, queries = _embed(encoder_path, tmp_path / "test", tmp_path / "test.npz")
    train_paths = _embed(encoder_path, tmp_path / "train", tmp_path / "train.npz")[0]
    label = [classes.index(Path(p).parent.name) for p in train_paths]
    truth = [classes.index(Path(p).parent.name) for p in test_paths]
    for k in report["ks"]:
        predicted = _knn_by_hand(bank, label, queries, k, len(classes))
        accuracy = float(np.mean([p == t for p, t in zip(predicted, truth)]))
        assert report["results"]["encoder"]["knn_top1"][str(k)] == pytest.approx(accuracy), k
    # the linear probe: scikit-learn on embed's vectors, standardised by the training split, at the C eval chose
    from sklearn.linear_model import LogisticRegression

    x_train, x_test = bank.double().numpy(), queries.double().numpy()
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0
    probe = report["results"]["encoder"]["linear_probe"]
    model = LogisticRegression(C=probe["C"], max_iter=1000, random_state=0).fit((x_train - mean) / std, label)
    accuracy = float((model.predict((x_test - mean) / std) == np.array(truth)).mean())
    assert probe["top1"] == pytest.approx(accuracy)
    # the untrained baseline was built for the same channel count
    assert report["results"]["untrained"]["feature_size"] == bank.shape[1]


@pytest.mark.parametrize("kind", ["grey16", "tiff4"])
def test_neighbours_show_grey_or_false_colour(kind, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from byol_wrap.job.cli import main
    from byol_wrap.job.neighbours import display_neighbours

    make, channels = MAKERS[kind]
    make(tmp_path / "images" / "a", np.random.default_rng(2))
    make(tmp_path / "images" / "b", np.random.default_rng(3), 2000)
    encoder_path = _encoder(tmp_path, find_image_paths(tmp_path / "images"))
    out = tmp_path / "n" / "neighbours.png"
    code = main(["neighbours", str(encoder_path), str(tmp_path / "images"), "--out", str(out), "--k", "3",
                 "--workers", "0"])
    assert code == 0, capsys.readouterr().err
    assert Image.open(out).size[0] > 100
    encoder = load_encoder(encoder_path)
    images = encoder.preprocess(tmp_path / "images")
    shown, caption = display_neighbours(images, meta_pixel_format(encoder.meta))
    assert shown.shape == (len(images), SIZE, SIZE, 3)
    # by hand: x / scale, each shown channel stretched from its 0.5 to its 99.5 percentile over the images
    x = images.double() / encoder.meta["pixel_format"]["scale"]
    first = x[:, :min(3, channels)].transpose(0, 1).reshape(min(3, channels), -1)
    lo, hi = (torch.quantile(first, q, dim=1).view(1, -1, 1, 1) for q in (0.005, 0.995))
    expected = ((x[:, :min(3, channels)] - lo) / (hi - lo)).clamp(0, 1).permute(0, 2, 3, 1)
    if channels == 1:
        assert caption.startswith("1 channel, shown grey")
        assert torch.equal(shown[..., 0], shown[..., 1]) and torch.equal(shown[..., 0], shown[..., 2])
        expected = expected.expand(-1, -1, -1, 3)
    else:
        assert caption.startswith(f"channels 1-3 of {channels}")
    assert_close_scaled(shown, expected, rtol=1e-5, msg="displayed")


@pytest.mark.parametrize("kind", ["grey16", "tiff4", "npy13"])
def test_onnx_takes_c_channels_scaled_as_documented(kind, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from byol_wrap.job.export_formats import export

    make, channels = MAKERS[kind]
    make(tmp_path / "images", np.random.default_rng(4))
    encoder_path = _encoder(tmp_path, find_image_paths(tmp_path / "images"))
    paths, expected = _embed(encoder_path, tmp_path / "images", tmp_path / "e.npz")
    path = export(encoder_path, "onnx")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    scale = json.loads(props["byol_wrap.input_scale"])
    assert int(props["byol_wrap.channels"]) == channels
    assert scale == load_encoder(encoder_path).meta["pixel_format"]["scale"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1] == channels
    samples = load_encoder(encoder_path).preprocess(paths)  # the files' own sample values at the encoder's size
    x = (samples.double() / scale).float().numpy()  # the documented input: samples / input_scale
    got = torch.from_numpy(session.run(None, {"images": x})[0])
    assert_close_scaled(got, expected, rtol=0, scale_rtol=1e-4, msg=f"onnxruntime vs embed ({kind})")


def test_safetensors_keeps_channels_and_vectors(tmp_path):
    pytest.importorskip("safetensors")
    from byol_wrap.job.export_formats import export, read_safetensors

    _bands4(tmp_path / "images", np.random.default_rng(5))
    encoder_path = _encoder(tmp_path, find_image_paths(tmp_path / "images"))
    paths, expected = _embed(encoder_path, tmp_path / "images", tmp_path / "e.npz")
    path = export(encoder_path, "safetensors")
    _, meta = read_safetensors(path)
    assert meta["channels"] == 4 and meta["pixel_format"] == {"channels": 4, "dtype": "uint16", "scale": 65535.0}
    _, again = _embed(path, tmp_path / "images", tmp_path / "s.npz")
    assert_close_scaled(again, expected, rtol=0, scale_rtol=1e-7, msg="embed from safetensors")


def test_timm_and_torchvision_load_the_c_channel_stem(tmp_path):
    timm = pytest.importorskip("timm")
    torchvision = pytest.importorskip("torchvision")
    from byol_wrap.job.export_formats import export
    from byol_wrap.job.input_channels import rebuild_first_conv

    _bands4(tmp_path / "images", np.random.default_rng(6))
    paths = find_image_paths(tmp_path / "images")
    for spec in ("timm/test_resnet", "torchvision/resnet18"):
        folder = tmp_path / spec.replace("/", "_")
        folder.mkdir()
        encoder_path = _encoder(folder, paths, spec=spec)
        encoder = load_encoder(encoder_path)
        _, expected = _embed(encoder_path, tmp_path / "images", folder / "e.npz")
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in encoder.meta["normalize"])
        x = (encoder.preprocess(paths).float() / 65535.0 - mean) / std
        written = export(encoder_path, "timm")
        if spec.startswith("timm/"):
            net = timm.create_model("test_resnet", in_chans=4, num_classes=0, checkpoint_path=str(written)).eval()
        else:
            net = torchvision.models.resnet18()
            rebuild_first_conv(net, 4)
            result = net.load_state_dict(torch.load(written, weights_only=True), strict=False)
            assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
            net.fc = nn.Identity()
            net.eval()
        with torch.no_grad():
            assert_close_scaled(net(x), expected, rtol=1e-4, msg=spec)


@pytest.mark.parametrize("kind", ["grey16", "tiff4"])
def test_pretrain_draws_neighbours_of_c_channel_runs(kind, tmp_path):
    pytest.importorskip("matplotlib")
    import warnings

    from byol_wrap.job.train import pretrain

    make, _ = MAKERS[kind]
    make(tmp_path / "images", np.random.default_rng(7))
    make(tmp_path / "images" / "more", np.random.default_rng(8), 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "could not draw ... neighbours.png" would fail the test
        pretrain(str(tmp_path / "images"), out=tmp_path / "run", model="byol_wrap/small_cnn:4", image_size=SIZE,
                 batch_size=4, steps=1, projection_size=8, projection_hidden_size=16, workers=0, progress=False,
                 device="cpu")
    assert Image.open(tmp_path / "run" / "plots" / "neighbours.png").size[0] > 100
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from byol_wrap.job.export_formats import export

    paths, expected = _embed(tmp_path / "run" / "encoder.pt", tmp_path / "images", tmp_path / "e.npz")
    session = ort.InferenceSession(str(export(tmp_path / "run", "onnx")), providers=["CPUExecutionProvider"])
    x = load_encoder(tmp_path / "run" / "encoder.pt").preprocess(paths).double() / 65535.0
    got = torch.from_numpy(session.run(None, {"images": x.float().numpy()})[0])
    assert_close_scaled(got, expected, rtol=0, scale_rtol=1e-4, msg="onnx of the run vs embed")


def test_rgb_arrays_for_a_c_channel_encoder_are_one_line_and_exit_2(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from byol_wrap.job.cli import main

    _grey16(tmp_path / "images", np.random.default_rng(9))
    encoder_path = _encoder(tmp_path, find_image_paths(tmp_path / "images"))
    for argv in (["eval", str(encoder_path), "digits"],
                 ["neighbours", str(encoder_path), "digits", "--out", str(tmp_path / "n.png")]):
        code = main(argv + ["--workers", "0"])
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == 2 and len(err) == 1 and "1 channel(s) of uint16" in err[0], err


def test_onnx_of_an_encoder_without_channel_metadata_takes_its_first_convs_channels(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from byol_wrap.job.export_formats import export

    torch.manual_seed(0)
    source = export_encoder(small_cnn(4, 2), tmp_path / "encoder.pt", model_spec="byol_wrap/small_cnn:4",
                            hidden_layer=-1, image_size=SIZE, normalize=([0.2, 0.4], [0.5, 0.25]),
                            representation_size=0, steps=0)  # written by hand: no channels, no pixel_format
    net = small_cnn(4, 2)
    net.load_state_dict(torch.load(source, weights_only=True)["state_dict"])
    written = export(source, "onnx", model=small_cnn(4, 2))  # the file does not say 2 channels: model= does
    session = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 2, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # by hand: normalise, the net, global average pooling of its last feature map
        normalised = (x - torch.tensor([0.2, 0.4]).view(1, 2, 1, 1)) / torch.tensor([0.5, 0.25]).view(1, 2, 1, 1)
        expected = net.eval()(normalised)
        expected = expected.mean(dim=(2, 3)) if expected.ndim == 4 else expected.flatten(1)
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    assert_close_scaled(got, expected, rtol=0, scale_rtol=1e-4, msg="2-channel onnx")
