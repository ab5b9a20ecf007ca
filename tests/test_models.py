"""byol_wrap.job.models: specs build the named nets (nothing downloaded), default hidden layers give the
family's pooled pre-logit features (checked against hook-free computations), clear errors."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from byol_wrap.core.hooks import RepresentationExtractor, resolve_layer
from byol_wrap.job.models import build_model, default_hidden_layer, small_cnn

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def _representation(spec, net, x):
    layer = resolve_layer(net, default_hidden_layer(spec, net))
    with torch.no_grad():
        return RepresentationExtractor(layer)(net.eval(), x)


def test_small_cnn_is_exactly_the_documented_net():
    net = small_cnn(4)
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride, c.padding, c.kernel_size, c.bias) for c in convs] == [
        (3, 4, (1, 1), (1, 1), (3, 3), None), (4, 8, (2, 2), (1, 1), (3, 3), None),
        (8, 16, (2, 2), (1, 1), (3, 3), None), (16, 32, (2, 2), (1, 1), (3, 3), None)]
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU"] * 4 + ["AdaptiveAvgPool2d", "Flatten"]
    assert all(m.inplace for m in net if isinstance(m, nn.ReLU))
    assert net(torch.rand(2, 3, 16, 16)).shape == (2, 32)
    assert build_model("byol_wrap/small_cnn")(torch.rand(2, 3, 8, 8)).shape == (2, 128)
    assert build_model("byol_wrap/small_cnn:8")(torch.rand(2, 3, 8, 8)).shape == (2, 64)
    assert default_hidden_layer("byol_wrap/small_cnn", net) == -1
    with pytest.raises(ValueError, match="positive int"):
        small_cnn(0)


def test_torchvision_resnet_default_layer_is_the_pooled_features():
    torch.manual_seed(0)
    net = build_model("torchvision/resnet18")
    assert default_hidden_layer("torchvision/resnet18", net) == "avgpool"
    x = torch.rand(2, 3, 32, 32)
    net.eval()
    with torch.no_grad():  # hook-free: the net with its classifier replaced
        fc, net.fc = net.fc, nn.Identity()
        expected = net(x)
        net.fc = fc
    torch.testing.assert_close(_representation("torchvision/resnet18", net, x), expected)


def test_torchvision_vit_gets_the_image_size_and_class_token():
    torch.manual_seed(0)
    net = build_model("torchvision/vit_b_32", image_size=32)
    assert net.image_size == 32 and default_hidden_layer("torchvision/vit_b_32", net) == "encoder"
    x = torch.rand(1, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        heads, net.heads = net.heads, nn.Identity()
        expected = net(x)  # torchvision's own class-token pre-logits
        net.heads = heads
    torch.testing.assert_close(_representation("torchvision/vit_b_32", net, x), expected)


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_timm_models_are_built_headless(name):
    pytest.importorskip("timm")
    torch.manual_seed(0)
    net = build_model(f"timm/{name}", image_size=32)
    assert net.num_classes == 0 and default_hidden_layer(f"timm/{name}", net) == -1
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = net.eval().forward_head(net.forward_features(x), pre_logits=True)
    torch.testing.assert_close(_representation(f"timm/{name}", net, x), expected)


@pytest.mark.parametrize("spec, expected", [
    ("torchvision/resnet81", r"unknown torchvision model 'resnet81'; close names: torchvision/resnet18"),
    ("timm/resnet81", r"unknown timm model 'resnet81'; close names: timm/resnet18"),
    ("byol_wrap/small", r"close names: byol_wrap/small_cnn"),
    ("resnet18", r"did you mean torchvision/resnet18\?"),
    ("nonsense", r"use one of: torchvision/<name>"),
    ("no_such_module_xyz:build", r"cannot import module 'no_such_module_xyz'"),
    ("byol_wrap.job.models:smal_cnn", r"has no attribute 'smal_cnn'; close names: small_cnn"),
])
def test_unknown_specs_suggest_close_names(spec, expected):
    with pytest.raises(ValueError, match=expected):
        build_model(spec)


def test_module_and_file_callables(tmp_path):
    assert isinstance(build_model("byol_wrap.job.models:small_cnn"), nn.Sequential)
    source = tmp_path / "my_nets.py"
    source.write_text(textwrap.dedent("""
        from torch import nn
        def build():
            return nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        def not_a_net():
            return 42
    """))
    net = build_model(f"{source}:build")
    assert net(torch.rand(1, 3, 8, 8)).shape == (1, 5)
    assert default_hidden_layer(f"{source}:build", net) == -2
    with pytest.raises(TypeError, match="not a torch.nn.Module"):
        build_model(f"{source}:not_a_net")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model(f"{tmp_path / 'missing.py'}:build")
    with pytest.raises(TypeError, match="spec string or a torch.nn.Module"):
        build_model(3)
    module = nn.Linear(2, 2)
    assert build_model(module) is module


def test_missing_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r'pip install "byol-wrap\[train\]"'):
        build_model("timm/resnet18")


def test_weights_round_trip_and_prefixes(tmp_path):
    torch.manual_seed(0)
    source = small_cnn(4)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ddp.pt")
    for name in ("plain.pt", "ddp.pt"):
        net = build_model("byol_wrap/small_cnn:4", weights=tmp_path / name)
        for (k, a), b in zip(net.state_dict().items(), source.state_dict().values()):
            assert torch.equal(a, b), k


def test_weights_mismatch_lists_the_keys(tmp_path):
    torch.save(small_cnn(4).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError) as info:
        build_model("byol_wrap/small_cnn:8", weights=tmp_path / "w.pt")
    assert "shape mismatches" in str(info.value) and "0.weight (4, 3, 3, 3) vs (8, 3, 3, 3)" in str(info.value)
    torch.save(build_model("torchvision/resnet18").state_dict(), tmp_path / "r.pt")
    with pytest.raises(ValueError, match=r"missing keys: 0\.weight.*unexpected keys: conv1\.weight"):
        build_model("byol_wrap/small_cnn:4", weights=tmp_path / "r.pt")
    (tmp_path / "broken.pt").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="truncated or foreign"):
        build_model("byol_wrap/small_cnn:4", weights=tmp_path / "broken.pt")
    with pytest.raises(FileNotFoundError):
        build_model("byol_wrap/small_cnn:4", weights=tmp_path / "missing.pt")


def test_timm_headless_model_takes_a_classifier_checkpoint(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    full = timm.create_model("resnet18", pretrained=False)  # like ImageNet weights: with fc
    torch.save(full.state_dict(), tmp_path / "imagenet.pt")
    net = build_model("timm/resnet18", weights=tmp_path / "imagenet.pt")
    assert torch.equal(net.conv1.weight, full.conv1.weight)


@pytest.mark.integration
def test_core_import_stays_light():
    code = ("import sys, byol_wrap, byol_wrap.job.io, byol_wrap.job.models, byol_wrap.job.data, byol_wrap.job.encoder\n"
            "print(sorted(m for m in ('PIL', 'timm', 'sklearn', 'matplotlib', 'tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
