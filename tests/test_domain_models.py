"""C-channel networks (issue 19): the first convolution rebuilt for C inputs, RGB weights adapted as timm does."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from byol_wrap.job.input_channels import adapt_rgb_kernel, adapt_state_dict, conv_channels, rebuild_first_conv

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["resnet18", "convnext_tiny", "efficientnet_b0"])
@pytest.mark.parametrize("channels", [1, 2, 4, 13])
def test_torchvision_first_conv_rebuilt_keeps_its_geometry(name, channels):
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.get_model(name, weights=None)
    old = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    line = rebuild_first_conv(net, channels)
    new = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert new.in_channels == channels and f"{channels} input channels" in line
    for attr in ("out_channels", "kernel_size", "stride", "padding", "dilation", "padding_mode"):
        assert getattr(new, attr) == getattr(old, attr), attr
    assert (new.bias is None) == (old.bias is None)
    assert conv_channels(net) == channels


def test_adapt_rgb_kernel_matches_timm_formula():
    w = torch.randn(5, 3, 3, 3)
    torch.testing.assert_close(adapt_rgb_kernel(w, 1), w[:, 0:1] + w[:, 1:2] + w[:, 2:3])
    expected = torch.cat([w, w, w[:, :1]], dim=1) * (3 / 7)
    torch.testing.assert_close(adapt_rgb_kernel(w, 7), expected)
    timm = pytest.importorskip("timm")
    from timm.models import adapt_input_conv

    for c in (1, 2, 4, 13):
        torch.testing.assert_close(adapt_rgb_kernel(w, c), adapt_input_conv(c, w.clone()))
    assert timm is not None


def test_grey_image_gives_the_rgb_networks_response_after_adaptation():
    rgb = nn.Conv2d(3, 4, 3, bias=False)
    grey = nn.Conv2d(1, 4, 3, bias=False)
    state, line = adapt_state_dict(rgb.state_dict(), grey, "w.pt")
    grey.load_state_dict(state)
    x = torch.rand(2, 1, 6, 6)
    torch.testing.assert_close(grey(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-6 * float(x.abs().max()))
    assert line and "summed" in line


def test_weights_of_another_channel_count_are_refused_clearly():
    five = nn.Conv2d(5, 4, 3)
    with pytest.raises(ValueError, match=r"w\.pt.*cannot be adapted to this 2-channel network"):
        adapt_state_dict(five.state_dict(), nn.Conv2d(2, 4, 3), "w.pt")
