"""byol_wrap.job.export_formats (``byol-wrap export --format``): each format loaded by the tool it is for (safetensors'
own reader and load_encoder, timm.create_model(checkpoint_path=...), torchvision's load_state_dict, onnxruntime)
gives the representations load_encoder gives; refusal over existing files; atomic writes."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from byol_wrap.job.encoder import export_encoder, load_encoder
from byol_wrap.job.export_formats import export, read_safetensors
from byol_wrap.job.models import build_model

from helpers import assert_close_scaled

pytestmark = pytest.mark.usefixtures("one_thread")
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SIZE = 32


def _encoder_file(folder: Path, spec: str, hidden_layer, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = build_model(spec, image_size=SIZE)
    with torch.no_grad():  # weights and BatchNorm statistics unlike a fresh build
        for p in net.parameters():
            p.mul_(1.1).add_(0.01)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
    return export_encoder(net, folder / "encoder.pt", model_spec=spec, hidden_layer=hidden_layer, image_size=SIZE,
                          normalize=(MEAN, STD), representation_size=0, steps=3)


def _images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))


def _by_hand(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_safetensors_header_and_load_encoder(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    source = _encoder_file(tmp_path, "byol_wrap/small_cnn:4", -1)
    path = export(source, "safetensors")
    assert path == tmp_path / "encoder.safetensors"
    with safetensors.safe_open(str(path), framework="pt") as handle:  # safetensors' own reader
        meta = json.loads(handle.metadata()["byol_wrap"])
        keys = set(handle.keys())
    assert meta["model_spec"] == "byol_wrap/small_cnn:4" and meta["steps"] == 3 and meta["image_size"] == SIZE
    assert keys == set(torch.load(source, weights_only=True)["state_dict"])
    x = _images()
    with torch.no_grad():
        expected = load_encoder(source)(x)
        got = load_encoder(path)(x)
    assert_close_scaled(got, expected, rtol=0, scale_rtol=1e-7)
    state, meta2 = read_safetensors(path)
    assert meta2 == meta and set(state) == keys
    # back to pt from the safetensors file
    again = export(path, "pt", tmp_path / "again.pt")
    with torch.no_grad():
        assert_close_scaled(load_encoder(again)(x), expected, rtol=0, scale_rtol=1e-7)


def test_refused_over_an_existing_file_and_atomic(tmp_path):
    pytest.importorskip("safetensors")
    source = _encoder_file(tmp_path, "byol_wrap/small_cnn:4", -1)
    (tmp_path / "encoder.safetensors").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(source, "safetensors")
    assert (tmp_path / "encoder.safetensors").read_bytes() == b"mine"
    export(source, "safetensors", overwrite=True)
    assert (tmp_path / "encoder.safetensors").read_bytes() != b"mine"
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(source, "pt", source)  # onto the source itself
    out = tmp_path / "out"
    out.mkdir()
    assert export(source, "safetensors", out) == out / "encoder.safetensors"  # a folder: the default name in it
    assert sorted(p.name for p in out.iterdir()) == ["encoder.safetensors"]  # no temporary file left
    with pytest.raises(ValueError, match="unknown export format"):
        export(source, "tflite")
    with pytest.raises(ValueError, match="timm/ and torchvision/"):
        export(source, "timm")
    torch.save({"x": torch.ones(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a byol-wrap encoder"):
        export(tmp_path / "foreign.pt", "onnx")


def test_timm_checkpoint_loads_in_timm_with_no_missing_key(tmp_path):
    timm = pytest.importorskip("timm")
    source = _encoder_file(tmp_path, "timm/resnet18", -1)
    path = export(source, "timm")
    assert path == tmp_path / "encoder_timm.pth"
    # the documented line: strict loading, so a missing or unexpected key raises
    net = timm.create_model("resnet18", num_classes=0, checkpoint_path=str(path)).eval()
    x = _images()
    with torch.no_grad():
        assert_close_scaled(net(_by_hand(x)), load_encoder(source)(x), rtol=1e-5, msg="timm features")
    # fine-tuning with a new head: the same trunk
    tuned = timm.create_model("resnet18", num_classes=5, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=0)).eval()
    with torch.no_grad():
        assert_close_scaled(tuned.forward_head(tuned.forward_features(_by_hand(x)), pre_logits=True),
                            load_encoder(source)(x), rtol=1e-5, msg="timm with a new head")


def test_torchvision_state_dict_misses_only_the_classifier(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    source = _encoder_file(tmp_path, "torchvision/resnet18", "avgpool")
    path = export(source, "timm")
    assert path == tmp_path / "encoder_torchvision.pth"
    net = torchvision.models.resnet18()
    result = net.load_state_dict(torch.load(path, weights_only=True), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    net.fc = nn.Identity()
    x = _images()
    with torch.no_grad():
        assert_close_scaled(net.eval()(_by_hand(x)), load_encoder(source)(x), rtol=1e-5, msg="torchvision")


def test_onnx_runs_in_onnxruntime_with_any_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    source = _encoder_file(tmp_path, "torchvision/resnet18", "avgpool")
    path = export(source, "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    encoder = load_encoder(source)
    for n in (1, 5):
        x = _images(n)
        got = torch.from_numpy(session.run(None, {"images": x.numpy().astype(np.float32)})[0])
        with torch.no_grad():
            expected = encoder(x)
        assert got.shape == (n, 512)
        assert_close_scaled(got, expected, rtol=0, scale_rtol=1e-4, msg=f"onnx batch {n}")
    # a check that fails writes nothing
    from byol_wrap.job.export_formats import export_onnx

    with pytest.raises(RuntimeError, match="differs from PyTorch"):
        export_onnx(encoder, tmp_path / "bad.onnx", rtol=-1.0)
    assert not (tmp_path / "bad.onnx").exists() and not list(tmp_path.glob(".*.tmp"))
