"""Layer discovery, early exit, non-square images, other channel counts and 1-D signals.

Every expected value is computed independently: shapes by hand from the layer
definitions, features by calling the net's submodules directly, gradients from a full
forward without early exit.
"""
from __future__ import annotations

import copy
from typing import List

import pytest
import torch
import torchvision
from torch import Tensor, nn

from byol_wrap import BYOL, list_layers, print_layers
from byol_wrap.core.hooks import RepresentationExtractor
from byol_wrap.core.layers import format_layers
from byol_wrap.core.pooling import pool, prefix_token_count

from helpers import imagenet_normalize_by_hand

SMALL = dict(projection_hidden_size=64, projection_size=32)


pytestmark = pytest.mark.usefixtures("one_thread")


def identity(x: Tensor) -> Tensor:
    return x


def jitter(x: Tensor) -> Tensor:
    return x + 0.05 * torch.randn_like(x)


class Recorder(nn.Module):
    """Identity layer that remembers the shapes (and last value) of what passes through it."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: List[tuple] = []
        self.last: Tensor = torch.empty(0)

    def forward(self, x: Tensor) -> Tensor:
        self.shapes.append(tuple(x.shape))
        self.last = x.detach().clone()
        return x


def cnn(channels: int = 3) -> nn.Sequential:
    return nn.Sequential(
        Recorder(),
        nn.Conv2d(channels, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def signal_encoder(channels: int = 2) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(channels, 8, 5, stride=2, padding=2), nn.BatchNorm1d(8), nn.ReLU(),
        nn.Conv1d(8, 16, 5, stride=2, padding=2), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(),
    )


# ====================================================================== list_layers
def test_list_layers_resnet18_shapes_sizes_and_indices() -> None:
    net = torchvision.models.resnet18()
    rows = {row["name"]: row for row in list_layers(net, 32)}
    # conv1 and maxpool each halve 32 -> 8; layer2..4 halve again; channels 64..512
    assert rows["maxpool"]["output_shape"] == (64, 8, 8)
    assert rows["layer3"]["output_shape"] == (256, 2, 2)
    assert rows["layer3"]["representation_size"] == 256
    assert rows["avgpool"]["output_shape"] == (512, 1, 1)
    assert rows["avgpool"]["representation_size"] == 512
    assert rows["avgpool"]["child_index"] == -2  # hidden_layer=-2 selects avgpool
    assert rows["fc"]["child_index"] is None  # -1 means the net's output, not the last child
    assert rows[None]["output_shape"] == (1000,) and rows[None]["child_index"] == -1
    # execution order: conv1 first, the output last
    names = [row["name"] for row in list_layers(net, 32)]
    assert names[0] == "conv1" and names[-1] is None
    # each BasicBlock's relu runs twice; the first call is the one used
    assert rows["layer1.0.relu"]["calls"] == 2 and rows["layer1"]["calls"] == 1


def test_list_layers_non_square_and_tokens_are_not_flattened() -> None:
    rows = {row["name"]: row for row in list_layers(torchvision.models.resnet18(), (24, 40))}
    assert rows["conv1"]["output_shape"] == (64, 12, 20)
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(32, 48), reg_tokens=2, depth=2)
    rows = {row["name"]: row for row in list_layers(vit, (32, 48))}
    # 2 x 3 patches + class token + 2 register tokens; representation = one token, not 9 * 192
    assert rows["blocks.1"]["output_shape"] == (9, 192)
    assert rows["blocks.1"]["representation_size"] == 192
    assert rows["blocks.1"]["pooling"] == "class token (token 0)"
    mean_rows = {row["name"]: row for row in list_layers(vit, (32, 48), token_pool="mean")}
    assert mean_rows["norm"]["pooling"] == "mean of tokens after 3 prefix"


def test_list_layers_1d_signal_uses_input_shape() -> None:
    net = signal_encoder(2)
    rows = {row["name"]: row for row in list_layers(net, input_shape=(2, 100))}
    assert rows["0"]["output_shape"] == (8, 50)  # stride 2, padding 2, kernel 5: 100 -> 50
    assert rows["0"]["representation_size"] == 8  # mean over the length, not 8 * 50
    assert rows["3"]["output_shape"] == (16, 25)
    assert rows[None]["output_shape"] == (16,)


def test_list_layers_has_no_side_effects() -> None:
    net = cnn()
    net.train()
    net[2].running_mean.fill_(0.25)
    state = copy.deepcopy(net.state_dict())
    rng = torch.get_rng_state()
    list_layers(net, 16)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in net.modules())
    assert all(not m._forward_hooks for m in net.modules())


def test_print_layers_table(capsys: pytest.CaptureFixture) -> None:
    print_layers(torchvision.models.resnet18(), 32, max_depth=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["hidden_layer", "type"]
    avgpool = next(line for line in lines if line.startswith("avgpool"))
    assert avgpool.split()[:4] == ["avgpool", "[-2]", "AdaptiveAvgPool2d", "(512,"]
    assert not any(line.startswith("layer1.0") for line in lines)  # max_depth=1: children only
    assert lines[-1].startswith("-1 (output)")
    assert "runs 2x" in format_layers(list_layers(torchvision.models.resnet18(), 32))


def test_unknown_layer_error_points_to_print_layers() -> None:
    with pytest.raises(ValueError, match=r"layer4.*print_layers"):
        BYOL(torchvision.models.resnet18(), 32, hidden_layer="layer5", **SMALL)
    with pytest.raises(ValueError, match="out of range"):
        BYOL(cnn(), 16, hidden_layer=20, **SMALL)


def test_list_layers_wrong_input_shape_is_a_clear_error() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(10, 4))
    with pytest.raises(ValueError, match="input_shape"):
        list_layers(net, 32)
    assert list_layers(net, input_shape=(10,))[-1]["output_shape"] == (4,)


# ====================================================================== early exit
def resnet_to_layer2(net: nn.Module, x: Tensor) -> Tensor:
    return net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))).mean(dim=(2, 3))


def test_early_exit_representation_and_gradients_match_the_full_net() -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    x = torch.randn(4, 3, 16, 16)
    weights = torch.randn(128)
    results = {}
    for label, compute in [
        ("by hand", lambda: resnet_to_layer2(net, x)),
        ("early exit", lambda: RepresentationExtractor("layer2", early_exit=True)(net, x)),
        ("full forward", lambda: RepresentationExtractor("layer2", early_exit=False)(net, x)),
    ]:
        net.zero_grad(set_to_none=True)
        representation = compute()
        (representation * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        results[label] = (representation.detach(), grads)
    reference, reference_grads = results["by hand"]
    assert "layer1.0.conv1.weight" in reference_grads and "layer3.0.conv1.weight" not in reference_grads
    for label in ("early exit", "full forward"):
        representation, grads = results[label]
        assert torch.equal(representation, reference), label
        assert grads.keys() == reference_grads.keys(), label
        for name in grads:
            assert torch.equal(grads[name], reference_grads[name]), (label, name)


class CallCounter:
    def __init__(self, modules: List[nn.Module]) -> None:
        self.count = 0
        self.handles = [m.register_forward_pre_hook(self) for m in modules]

    def __call__(self, *_: object) -> None:
        self.count += 1

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def test_early_exit_skips_later_layers_and_gives_identical_training() -> None:
    torch.manual_seed(0)
    learner = BYOL(cnn(), 16, hidden_layer="3", **SMALL)  # after the first conv block
    images = torch.rand(4, 3, 16, 16)
    outcome = {}
    for early_exit in (True, False):
        learner.extractor.early_exit = early_exit
        counter = CallCounter([learner.net[4], learner.net[8], learner.target_net[4], learner.target_net[8]])
        torch.manual_seed(1)  # same augmentations for both runs
        learner.zero_grad(set_to_none=True)
        loss = learner(images)
        loss.backward()
        counter.remove()
        grads = [p.grad.clone() for p in learner.parameters() if p.grad is not None]
        outcome[early_exit] = (loss.detach(), grads, counter.count)
    assert outcome[True][2] == 0, "layers after the hidden layer ran despite early exit"
    # (online + target) x (second conv + linear), once per view, or once for both views in one pass
    assert outcome[False][2] == (4 if learner.view_batching == "one_pass" else 8)
    assert torch.equal(outcome[True][0], outcome[False][0])
    assert len(outcome[True][1]) == len(outcome[False][1]) > 0
    for early, full in zip(outcome[True][1], outcome[False][1]):
        assert torch.equal(early, full)
    assert all(not m._forward_hooks for m in learner.modules())
    # the layers that never run get no gradient; DDP is told to ignore exactly those
    assert set(learner._ddp_params_and_buffers_to_ignore) == {"net.4.weight", "net.4.bias", "net.8.weight",
                                                                "net.8.bias"}


class Swallower(nn.Module):
    """A net whose forward catches Exception around its layers, as some model code does."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.head = nn.Conv2d(4, 4, 3)
        self.head_ran = 0

    def forward(self, x: Tensor) -> Tensor:
        try:
            x = self.stem(x)
        except Exception:  # noqa: BLE001 - the point of the test
            return x
        self.head_ran += 1
        return self.head(x)


def test_early_exit_is_not_swallowed_by_except_exception() -> None:
    net = Swallower()
    x = torch.randn(2, 3, 8, 8)
    out = RepresentationExtractor("stem")(net, x)
    assert net.head_ran == 0
    torch.testing.assert_close(out, net.stem(x).mean(dim=(2, 3)))


# ====================================================================== non-square images
def test_non_square_images_end_to_end_with_default_augmentations() -> None:
    torch.manual_seed(0)
    net = cnn()
    learner = BYOL(net, image_size=(24, 40), hidden_layer="6", **SMALL)
    assert learner.input_shape == (3, 24, 40)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.05)
    net[0].shapes.clear()
    for _ in range(2):
        loss = learner(torch.rand(4, 3, 50, 70))  # any input size: the crop resizes to (24, 40)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        learner.update_moving_average()
    # per-sample shapes: views of 4 images, one forward per view or both views as one batch of 8
    assert {shape[1:] for shape in net[0].shapes} == {(3, 24, 40)}
    assert {shape[0] for shape in net[0].shapes} <= {4, 8}
    assert {shape[1:] for shape in learner.target_net[0].shapes} >= {(3, 24, 40)}
    learner.eval()
    images = torch.rand(3, 3, 24, 40)
    representation = learner(images, return_embedding=True, return_projection=False)
    torch.testing.assert_close(representation, net[:6](imagenet_normalize_by_hand(images)).mean(dim=(2, 3)))


def test_non_square_vit() -> None:
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(32, 48), depth=2)
    learner = BYOL(vit, image_size=(32, 48), hidden_layer="norm", **SMALL)
    loss = learner(torch.rand(4, 3, 32, 48))
    loss.backward()
    assert learner.representation_size == 192 and vit.patch_embed.proj.weight.grad is not None


# ====================================================================== channels other than 3
def test_default_augmentations_fit_other_channel_counts_and_normalize_is_checked() -> None:
    for channels in (1, 4):  # the channel-agnostic defaults (tests/test_channels.py)
        learner = BYOL(cnn(channels), 16, hidden_layer="6", **SMALL)
        assert learner.uses_default_augmentations and learner.normalizer is None
    with pytest.raises(ValueError, match=r"normalize has mean/std of \[4\] values but the inputs have 3 channels"):
        BYOL(cnn(3), 16, hidden_layer="6", normalize=([0.5] * 4, [0.2] * 4), **SMALL)
    with pytest.raises(ValueError, match="4 channels"):
        BYOL(cnn(4), 16, hidden_layer="6", augment_fn=identity, normalize=([0.5] * 3, [0.2] * 3), **SMALL)


def test_user_normalisation_for_four_channels() -> None:
    torch.manual_seed(0)
    mean, std = [0.1, 0.2, 0.3, 0.4], [0.5, 0.25, 2.0, 1.0]
    net = cnn(4)
    learner = BYOL(net, 16, hidden_layer="6", augment_fn=identity, normalize=(mean, std), **SMALL)
    images = torch.rand(4, 4, 16, 16)
    by_hand = (images - torch.tensor(mean).view(1, 4, 1, 1)) / torch.tensor(std).view(1, 4, 1, 1)
    learner(images).backward()
    for view in net[0].last.split(len(images)):  # the views end with the user's statistics
        torch.testing.assert_close(view, by_hand)
    learner.eval()
    representation = learner(images, return_embedding=True, return_projection=False)
    torch.testing.assert_close(representation, net[:6](by_hand).mean(dim=(2, 3)))


def test_custom_augment_without_normalize_is_left_alone() -> None:
    net = cnn(4)
    learner = BYOL(net, 16, hidden_layer="6", augment_fn=identity, **SMALL)
    images = torch.rand(4, 4, 16, 16)
    learner(images)
    assert all(torch.equal(view, images) for view in net[0].last.split(len(images)))


# ====================================================================== inputs that are not images
def test_signal_encoder_needs_input_shape_and_augmentations() -> None:
    with pytest.raises(ValueError, match=r"Conv1d.*input_shape=\(channels, length\)"):
        BYOL(signal_encoder(2), 32, hidden_layer=-1, augment_fn=jitter, **SMALL)
    with pytest.raises(ValueError, match=r"not \(channels, height, width\) images.*augment_fn"):
        BYOL(signal_encoder(2), input_shape=(2, 100), hidden_layer=-1, **SMALL)
    with pytest.raises(ValueError, match="input_shape"):
        BYOL(signal_encoder(2), hidden_layer=-1, augment_fn=jitter, **SMALL)


def test_signal_encoder_trains_and_embeds() -> None:
    torch.manual_seed(0)
    net = signal_encoder(2)
    learner = BYOL(net, input_shape=(2, 100), hidden_layer="3", augment_fn=jitter,
                   normalize=([0.5, -1.0], [2.0, 0.5]), **SMALL)
    assert learner.representation_size == 16  # the conv's channels, pooled over the length
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.05)
    before = net[0].weight.detach().clone()
    for _ in range(2):
        loss = learner(torch.randn(4, 2, 100))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        learner.update_moving_average()
    assert not torch.equal(net[0].weight, before)
    learner.eval()
    signals = torch.randn(3, 2, 100)
    normalized = (signals - torch.tensor([0.5, -1.0]).view(1, 2, 1)) / torch.tensor([2.0, 0.5]).view(1, 2, 1)
    representation = learner(signals, return_embedding=True, return_projection=False)
    torch.testing.assert_close(representation, net[:4](normalized).mean(dim=2))
    with pytest.raises(ValueError, match=r"\(N, 2, 100\)"):
        learner(torch.randn(3, 3, 100), return_embedding=True)


def test_feature_vectors_and_volumes() -> None:
    mlp = nn.Sequential(nn.Linear(20, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 8))
    learner = BYOL(mlp, input_shape=(20,), hidden_layer="2", augment_fn=jitter, **SMALL)
    assert learner.representation_size == 32
    learner(torch.randn(4, 20)).backward()
    volume = nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv3d(6, 5, 3, padding=1))
    with pytest.raises(ValueError, match=r"Conv3d.*input_shape"):
        BYOL(volume, 8, hidden_layer=-1, augment_fn=jitter, **SMALL)
    learner = BYOL(volume, input_shape=(1, 4, 8, 8), hidden_layer=-1, augment_fn=jitter, **SMALL)
    assert learner.representation_size == 5  # averaged over depth, height, width; not 5 * 4 * 8 * 8
    learner.eval()
    x = torch.randn(2, 1, 4, 8, 8)
    torch.testing.assert_close(learner(x, return_embedding=True, return_projection=False),
                               volume(x).mean(dim=(2, 3, 4)))


# ====================================================================== token pooling
def test_token_pooling_matches_timm_and_skips_prefix_tokens() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for pooling, kwargs in (("cls", {}), ("mean", dict(global_pool="avg", fc_norm=False))):
        vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, reg_tokens=2,
                                **kwargs).eval()
        assert prefix_token_count(vit) == 3
        with torch.no_grad():
            ours = RepresentationExtractor("norm", token_pool=pooling)(vit, x)
            timms = vit.forward_head(vit.forward_features(x), pre_logits=True)
        torch.testing.assert_close(ours, timms)
    tokens = torch.arange(12.0).view(1, 4, 3)
    torch.testing.assert_close(pool(tokens, "mean", num_prefix_tokens=1), torch.tensor([[6.0, 7.0, 8.0]]))
    torch.testing.assert_close(pool(torch.tensor([1.0, 2.0])), torch.tensor([[1.0], [2.0]]))  # one scalar each
    assert prefix_token_count(torchvision.models.vit_b_16(image_size=32)) == 1
    assert prefix_token_count(cnn()) == 0


def test_channels_last_feature_maps_of_timm_swin() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=2,
                             depths=(1, 1, 1, 1)).eval()
    rows = {row["name"]: row for row in list_layers(swin, 32)}
    assert rows["norm"]["output_shape"] == (1, 1, 768)  # (H, W, C): 32 / 4 / 2 / 2 / 2
    assert rows["norm"]["representation_size"] == 768
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = RepresentationExtractor("layers.2")(swin, x)
        by_hand = swin.layers[2](swin.layers[1](swin.layers[0](swin.patch_embed(x)))).mean(dim=(1, 2))
        torch.testing.assert_close(ours, by_hand)
        torch.testing.assert_close(RepresentationExtractor("norm")(swin, x),
                                   swin.forward_head(swin.forward_features(x), pre_logits=True))
