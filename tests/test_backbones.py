"""The backbone matrix: every family a user is likely to wrap trains and embeds.

For each backbone: build ``BYOL`` on random weights, run two optimizer steps with
``update_moving_average()``, then take embeddings. Each embedding is checked against the
backbone's own code path for the same features (torchvision/timm functions or the
layers called by hand), the EMA of one target tensor against the hand-written
recurrence, and the parameters left without gradient against the probe's DDP list.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import kornia.augmentation as K
import pytest
import torch
import torchvision
from torch import Tensor, nn

from byol_wrap import BYOL, list_layers
from byol_wrap.core.hooks import resolve_layer

from conftest import SmallCNN  # a user's own backbone, with any number of input channels
from helpers import assert_close_scaled, imagenet_normalize_by_hand

timm = pytest.importorskip("timm", reason="timm is in the [test] extra: pip install -e '.[test]'")

BATCH = 4


pytestmark = pytest.mark.usefixtures("one_thread")
TAU = 0.996


# ---------------------------------------------------------------- reference features, by hand
def tv_resnet_features(net: nn.Module, x: Tensor) -> Tensor:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


def tv_features_avgpool(net: nn.Module, x: Tensor) -> Tensor:
    """mobilenet_v3 / efficientnet: ``features -> avgpool -> flatten`` (then the classifier)."""
    return torch.flatten(net.avgpool(net.features(x)), 1)


def tv_vit_class_token(net: nn.Module, x: Tensor) -> Tensor:
    tokens = net._process_input(x)
    tokens = torch.cat([net.class_token.expand(x.shape[0], -1, -1), tokens], dim=1)
    return net.encoder(tokens)[:, 0]


def timm_pre_logits(net: nn.Module, x: Tensor) -> Tensor:
    return net.forward_head(net.forward_features(x), pre_logits=True)


def small_cnn_features(net: nn.Module, x: Tensor) -> Tensor:
    return net.features(x).mean(dim=(2, 3))


@dataclass
class Case:
    make: Callable[[], nn.Module]
    hidden_layer: Any
    size: int  # the representation size the family is documented to give
    reference: Callable[[nn.Module, Tensor], Tensor]
    channels: int = 3
    image_size: int = 32
    kwargs: Dict[str, Any] = field(default_factory=dict)
    normalize: Optional[Callable[[Tensor], Tensor]] = imagenet_normalize_by_hand


def user_stats(channels: int):
    mean = [0.1 * (c + 1) for c in range(channels)]
    std = [0.2 + 0.05 * c for c in range(channels)]

    def normalize(x: Tensor) -> Tensor:
        return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)

    kwargs = dict(
        augment_fn=nn.Sequential(K.RandomResizedCrop((32, 32), scale=(0.3, 1.0)), K.RandomHorizontalFlip()),
        normalize=(mean, std),
    )
    return kwargs, normalize


CASES: Dict[str, Case] = {
    "torchvision-resnet18": Case(lambda: torchvision.models.resnet18(), "avgpool", 512, tv_resnet_features),
    "torchvision-mobilenet_v3_small": Case(lambda: torchvision.models.mobilenet_v3_small(), -2, 576,
                                           tv_features_avgpool),
    "torchvision-efficientnet_b0": Case(lambda: torchvision.models.efficientnet_b0(), -2, 1280, tv_features_avgpool),
    # 86M parameters: one forward for both views (the default one pass) halves the weight traffic
    "torchvision-vit_b_16": Case(lambda: torchvision.models.vit_b_16(image_size=32), "encoder", 768,
                                 tv_vit_class_token),
    "timm-resnet18": Case(lambda: timm.create_model("resnet18", pretrained=False), "global_pool", 512,
                          timm_pre_logits),
    "timm-convnext_atto": Case(lambda: timm.create_model("convnext_atto", pretrained=False), "head.norm", 320,
                               timm_pre_logits),
    "timm-vit_tiny-cls": Case(lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32),
                              "norm", 192, timm_pre_logits),
    # timm's own average pooling skips the class token: token_pool="mean" must do the same
    "timm-vit_tiny-mean": Case(
        lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, global_pool="avg",
                                  fc_norm=False),
        "norm", 192, timm_pre_logits, kwargs=dict(token_pool="mean")),
    "timm-convnext_atto-num_classes0": Case(
        lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=0), -1, 320, timm_pre_logits),
    "custom-cnn-1ch": Case(lambda: SmallCNN(in_channels=1, width=16), "pool", 32, small_cnn_features, channels=1),
    "custom-cnn-4ch": Case(lambda: SmallCNN(in_channels=4, width=16), "pool", 32, small_cnn_features, channels=4),
}


@pytest.mark.parametrize("name", list(CASES))
def test_backbone_trains_and_embeds(name: str) -> None:
    case = CASES[name]
    torch.manual_seed(0)
    net = case.make()
    kwargs = dict(case.kwargs)
    normalize = case.normalize
    if case.channels != 3:
        extra, normalize = user_stats(case.channels)
        kwargs.update(extra)
    learner = BYOL(net, image_size=case.image_size, hidden_layer=case.hidden_layer,
                   projection_hidden_size=64, projection_size=32, **kwargs)
    assert learner.representation_size == case.size

    # list_layers reports the same size for the chosen layer
    layer = resolve_layer(net, case.hidden_layer)
    rows = {row["name"]: row for row in list_layers(net, case.image_size, token_pool=kwargs.get("token_pool", "auto"))}
    assert rows[layer]["representation_size"] == case.size

    watched = next(p for p in net.parameters() if p.requires_grad)
    target_watched = next(learner.target_net.parameters())
    target_expected = watched.detach().clone()  # the target starts as a copy of the online net
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.05)
    for _ in range(2):
        images = torch.rand(BATCH, case.channels, case.image_size, case.image_size)
        loss = learner(images)
        assert torch.isfinite(loss) and 0.0 <= loss.item() <= 8.0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        learner.update_moving_average()
        target_expected = TAU * target_expected + (1 - TAU) * watched.detach()
    assert_close_scaled(target_watched, target_expected, rtol=1e-5)
    assert not torch.equal(target_watched, watched), "the online weights did not move"

    # exactly the parameters that got no gradient in real training are the ones the probe reported
    no_grad = {f"net.{n}" for n, p in net.named_parameters() if p.requires_grad and p.grad is None}
    assert no_grad == set(learner._ddp_params_and_buffers_to_ignore)

    learner.eval()
    images = torch.rand(BATCH, case.channels, case.image_size, case.image_size)
    with torch.no_grad():
        projection, representation = learner(images, return_embedding=True)
        expected = case.reference(net, normalize(images))
    assert projection.shape == (BATCH, 32)
    assert_close_scaled(representation, expected, rtol=1e-4)
