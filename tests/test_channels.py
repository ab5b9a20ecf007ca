"""Images with any number of channels (issue 19, the library): the channel-agnostic default
augmentations, their intensity stages against hand computations, and BYOL learners for 1-, 2-,
4- and 13-channel timm and torchvision networks."""
from __future__ import annotations

import copy
import math
import warnings

import kornia.augmentation as K
import pytest
import torch
import torchvision
from torch import nn

from byol_wrap import BYOL, byol_augmentation, default_augmentations
from byol_wrap.core.augment import ColorJitter
from byol_wrap.core.augment_channels import (
    CheckChannels,
    IntensityJitter,
    RandomSolarizeRange,
    adjust_brightness,
    adjust_contrast,
    adjust_gamma,
    solarize,
)
from byol_wrap.core.checks import ImageRangeWarning

from helpers import assert_close_scaled

timm = pytest.importorskip("timm", reason="timm is in the [test] extra: pip install -e '.[test]'")

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(projection_size=16, projection_hidden_size=32)
CHANNELS = (1, 2, 4, 13)


def torchvision_resnet(channels: int) -> nn.Module:
    net = torchvision.models.resnet18()
    old = net.conv1
    net.conv1 = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    return net


def timm_resnet(channels: int) -> nn.Module:
    return timm.create_model("resnet10t", in_chans=channels, pretrained=False)


def stage_types(pipeline: nn.Sequential) -> list:
    return [type(m) for m in pipeline]


# ====================================================================== learners, end to end
@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("family", ["timm", "torchvision"])
def test_learner_with_default_augmentations_trains_for_any_channel_count(family: str, channels: int) -> None:
    torch.manual_seed(channels)
    net = timm_resnet(channels) if family == "timm" else torchvision_resnet(channels)
    hidden = "global_pool" if family == "timm" else "avgpool"
    learner = BYOL(net, image_size=32, hidden_layer=hidden, **SMALL)
    assert learner.input_shape == (channels, 32, 32)
    assert learner.normalizer is None  # normalize="auto": no ImageNet statistics for channels != 3
    for pipeline in (learner.augment1, learner.augment2):
        kinds = stage_types(pipeline)
        assert IntensityJitter in kinds and ColorJitter not in kinds and K.RandomGrayscale not in kinds, kinds
    images = torch.rand(4, channels, 32, 32) * 1000  # float data far outside [0, 1]
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.01)
    target_before = {n: p.detach().clone() for n, p in learner.target_net.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageRangeWarning)  # unnormalised on purpose; its own test below
        loss = learner(images)
    assert math.isfinite(loss.item())
    optimizer.zero_grad()
    loss.backward()
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == channels and first.weight.grad is not None
    assert float(first.weight.grad.abs().sum()) > 0
    optimizer.step()
    tau = learner.update_moving_average()
    online = dict(net.named_parameters())
    for name, before in target_before.items():  # xi <- tau xi + (1 - tau) theta, written out
        expected = tau * before + (1 - tau) * online[name].detach()
        assert_close_scaled(dict(learner.target_net.named_parameters())[name], expected, rtol=1e-6, msg=name)


def test_per_channel_statistics_normalise_views_and_embeddings() -> None:
    torch.manual_seed(0)
    net = torchvision_resnet(4).eval()
    mean, std = [100.0, 200.0, 300.0, 400.0], [10.0, 20.0, 30.0, 40.0]
    learner = BYOL(net, 32, hidden_layer="avgpool", normalize=(mean, std), **SMALL)
    x = torch.rand(2, 4, 32, 32) * 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # normalised data: no range warning
        representation = learner.eval()(x, return_embedding=True, return_projection=False)
    by_hand = (x - torch.tensor(mean).view(1, 4, 1, 1)) / torch.tensor(std).view(1, 4, 1, 1)
    features = nn.Sequential(*list(net.children())[:-1])
    with torch.no_grad():
        assert_close_scaled(representation, features(by_hand).flatten(1), rtol=1e-4)
    auto = BYOL(copy.deepcopy(net), 32, hidden_layer="avgpool", **SMALL).eval()  # "auto": no normalisation
    with torch.no_grad():
        unnormalised = auto(x / 1000, return_embedding=True, return_projection=False)
        assert_close_scaled(unnormalised, features(x / 1000).flatten(1), rtol=1e-4)


def test_unnormalised_data_far_outside_unit_range_warns_once_with_what_to_pass() -> None:
    learner = BYOL(torchvision_resnet(2), 32, hidden_layer="avgpool", **SMALL)
    with pytest.warns(ImageRangeWarning, match=r"normalize=\(mean, std\)") as record:
        learner(torch.rand(4, 2, 32, 32) * 1000)
    print(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BYOL(torchvision_resnet(2), 32, hidden_layer="avgpool", **SMALL)(torch.rand(4, 2, 32, 32))


def test_wrong_channel_counts_give_errors_naming_both_counts() -> None:
    learner = BYOL(torchvision_resnet(13), 32, hidden_layer="avgpool", **SMALL)
    for call in (lambda x: learner(x), lambda x: learner.eval()(x, return_embedding=True)):
        with pytest.raises(ValueError, match=r"13-channel.*3 channels") as info:
            call(torch.rand(4, 3, 32, 32))
        print(info.value)
    learner.train()
    with pytest.raises(TypeError, match=r"x.float\(\) / 65535"):
        learner(torch.zeros(4, 13, 32, 32, dtype=torch.int16))
    with pytest.raises(ValueError, match=r"built for 13-channel images.*has 4 channels"):
        byol_augmentation(32, channels=13)(torch.rand(2, 4, 40, 40))
    with pytest.raises(ValueError, match=r"first convolution takes 1 channels but the inputs have 3") as info:
        BYOL(torchvision_resnet(1), input_shape=(3, 32, 32), hidden_layer="avgpool", **SMALL)
    print(info.value)
    with pytest.raises(TypeError, match="floating-point"):
        byol_augmentation(32, channels=1)(torch.zeros(2, 1, 32, 32, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"gamma, value_range only apply to the channel-agnostic"):
        byol_augmentation(32, channels=3, gamma=(0.5, 2.0), value_range=(0, 1))
    with pytest.raises(ValueError, match=r"normalize has mean/std of \[2\] values but the inputs have 4 channels"):
        byol_augmentation(32, channels=4, normalize=([0.0, 0.0], [1.0, 1.0]))
    with pytest.raises(ValueError, match="clip=True"):
        byol_augmentation(32, channels=4, clip=True)
    with pytest.raises(ValueError, match="value_range"):
        byol_augmentation(32, channels=4, value_range=(1.0, 1.0))


# ====================================================================== the pipelines' structure
def test_channel_pipelines_keep_the_papers_structure_and_probabilities() -> None:
    t1, t2 = default_augmentations(224, channels=13)
    assert stage_types(t1) == [CheckChannels, K.RandomResizedCrop, K.RandomHorizontalFlip, IntensityJitter,
                               K.RandomGaussianBlur]
    assert stage_types(t2) == stage_types(t1) + [RandomSolarizeRange]
    for t in (t1, t2):
        crop = t[1]
        assert crop.flags["size"] == (224, 224)
        assert tuple(float(v) for v in crop._param_generator.scale) == pytest.approx((0.08, 1.0))
        assert tuple(float(v) for v in crop._param_generator.ratio) == pytest.approx((3 / 4, 4 / 3))
        assert t[2].p == 0.5
        jitter = t[3]
        assert jitter.p == 0.8 and jitter.brightness == pytest.approx((0.6, 1.4))
        assert jitter.contrast == pytest.approx((0.6, 1.4)) and jitter.gamma == (0.7, 1.5)
        assert jitter.per_image_order and not jitter.per_channel and jitter.value_range is None
        blur = t[4]
        assert blur.flags["kernel_size"] == (23, 23)
        assert tuple(float(v) for v in blur._param_generator.sigma) == pytest.approx((0.1, 2.0))
    assert t1[4].p == 1.0 and t2[4].p == 0.1 and t2[5].p == 0.2
    changed = byol_augmentation(32, view=2, channels=1, crop_scale=(0.2, 1.0), jitter_p=0.5, blur_p=0.0,
                                solarize_p=0.3, brightness=0.2, contrast=(0.5, 2.0), gamma=(0.8, 1.25),
                                per_channel=True, value_range=(0, 4095), clip=True, jitter_order="batch")
    kinds = {type(m): m for m in changed}
    assert K.RandomGaussianBlur not in kinds and kinds[RandomSolarizeRange].p == 0.3
    jitter = kinds[IntensityJitter]
    assert (jitter.p, jitter.brightness, jitter.contrast, jitter.gamma) == (0.5, (0.8, 1.2), (0.5, 2.0), (0.8, 1.25))
    assert jitter.per_channel and jitter.clip and not jitter.per_image_order
    assert jitter.value_range == (0.0, 4095.0) and kinds[RandomSolarizeRange].value_range == (0.0, 4095.0)
    assert not any(isinstance(m, IntensityJitter) for m in byol_augmentation(32, channels=2, jitter_p=0.0))


def test_rgb_pipelines_are_unchanged_and_three_other_bands_can_opt_out() -> None:
    for view in (1, 2):
        kinds = stage_types(byol_augmentation(32, view=view))
        assert ColorJitter in kinds and K.RandomGrayscale in kinds and IntensityJitter not in kinds
        assert kinds == stage_types(byol_augmentation(32, view=view, channels=3))
        assert not byol_augmentation(32, view=view)[2].per_image_order  # one order per batch, as before
        bands = byol_augmentation(32, view=view, channels=3, rgb=False)
        assert stage_types(bands) == stage_types(byol_augmentation(32, view=view, channels=2))
        assert bands(torch.rand(2, 3, 40, 40) * 1000).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="rgb=True needs channels=3"):
        byol_augmentation(32, channels=4, rgb=True)


def test_pipeline_output_keeps_shape_device_dtype_and_scale() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in (torch.float32, torch.float64):
            for view in (1, 2):
                torch.manual_seed(view)
                x = torch.rand(8, 13, 40, 40, dtype=dtype, device=device) * 1000
                out = byol_augmentation((24, 32), view=view, channels=13)(x)
                assert (out.shape, out.dtype, out.device.type) == ((8, 13, 24, 32), dtype, device)
                assert torch.isfinite(out).all()
                assert float(out.max()) > 100, "values stay at the data's scale (no [0, 1] clamp)"


def test_augmentations_are_drawn_per_sample() -> None:
    torch.manual_seed(0)
    batch = (torch.rand(1, 4, 48, 48) * 1000).repeat(8, 1, 1, 1)
    for view in (1, 2):
        out = byol_augmentation(32, view=view, channels=4)(batch)
        assert len({tuple(out[i].flatten()[:64].tolist()) for i in range(8)}) == 8


# ====================================================================== each operation, by hand
F64 = dict(dtype=torch.float64)
KNOWN = torch.tensor([[[[0.0, 250.0], [500.0, 1000.0]], [[10.0, 20.0], [30.0, 40.0]]]], dtype=torch.float64)


def test_brightness_by_hand() -> None:
    out = adjust_brightness(KNOWN, torch.tensor([1.4], **F64))
    expected = torch.tensor([[[[0.0, 350.0], [700.0, 1400.0]], [[14.0, 28.0], [42.0, 56.0]]]], dtype=torch.float64)
    assert_close_scaled(out, expected, rtol=1e-12)  # 1400 > 1000: nothing clipped
    per_channel = adjust_brightness(KNOWN, torch.tensor([[0.5, 2.0]], **F64))
    expected = torch.tensor([[[[0.0, 125.0], [250.0, 500.0]], [[20.0, 40.0], [60.0, 80.0]]]], dtype=torch.float64)
    assert_close_scaled(per_channel, expected, rtol=1e-12)
    around = adjust_brightness(torch.tensor([[[[100.0, 300.0]]]]), torch.tensor([0.5]), origin=100.0)
    assert around.flatten().tolist() == [100.0, 200.0]  # 100 + 0.5 (x - 100)


def test_contrast_by_hand() -> None:
    # channel 0: mean (0 + 250 + 500 + 1000) / 4 = 437.5; channel 1: mean 25
    out = adjust_contrast(KNOWN, torch.tensor([0.6], **F64))
    expected = torch.tensor([[[[437.5 - 0.6 * 437.5, 437.5 - 0.6 * 187.5], [437.5 + 0.6 * 62.5, 437.5 + 0.6 * 562.5]],
                              [[25 - 0.6 * 15, 25 - 0.6 * 5], [25 + 0.6 * 5, 25 + 0.6 * 15]]]], dtype=torch.float64)
    assert_close_scaled(out, expected, rtol=1e-12)
    stretched = adjust_contrast(KNOWN, torch.tensor([[1.4, 2.0]], **F64))
    assert float(stretched[0, 0, 1, 1]) == pytest.approx(437.5 + 1.4 * 562.5)  # 1225: above the data's max
    assert float(stretched[0, 1, 0, 0]) == pytest.approx(25 - 2.0 * 15)  # -5: below 0, not clipped


def test_gamma_by_hand() -> None:
    # per-image range: channel 0 [0, 1000], channel 1 [10, 40]
    out = adjust_gamma(KNOWN, torch.tensor([2.0], **F64))
    expected = torch.tensor([[[[0.0, 62.5], [250.0, 1000.0]],
                              [[10.0, 10 + 30 * (1 / 3) ** 2], [10 + 30 * (2 / 3) ** 2, 40.0]]]], dtype=torch.float64)
    assert_close_scaled(out, expected, rtol=1e-12)
    # a declared range: x in [0, 2000] mapped, values outside it left as they are
    x = torch.tensor([[[[-50.0, 500.0, 2000.0, 2500.0]]]], dtype=torch.float64)
    out = adjust_gamma(x, torch.tensor([0.5], **F64), value_range=(0.0, 2000.0))
    assert out.flatten().tolist() == pytest.approx([-50.0, 2000 * 0.25 ** 0.5, 2000.0, 2500.0])
    flat = torch.full((1, 1, 2, 2), 7.0)  # a constant channel has no range: unchanged
    assert torch.equal(adjust_gamma(flat, torch.tensor([2.0])), flat)


def test_solarization_by_hand() -> None:
    # per-image range: channel 0 [0, 1000] (mid 500), channel 1 [10, 40] (mid 25)
    expected = torch.tensor([[[[0.0, 250.0], [500.0, 0.0]], [[10.0, 20.0], [20.0, 10.0]]]], dtype=torch.float64)
    assert torch.equal(solarize(KNOWN), expected)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    assert torch.equal(solarize(x, value_range=(0, 1)), torch.where(x < 0.5, x, 1 - x))  # the paper's
    big = torch.tensor([[[[100.0, 9000.0]]]])
    assert solarize(big, value_range=(0, 4095)).flatten().tolist() == [100.0, 4095 - 9000.0]
    stage = RandomSolarizeRange(p=1.0, value_range=(0.0, 1.0))
    assert torch.equal(stage(x), torch.where(x < 0.5, x, 1 - x))


def test_jitter_composes_the_steps_in_each_images_order() -> None:
    x = torch.rand(3, 2, 5, 5, dtype=torch.float64) * 1000
    jitter = IntensityJitter(p=1.0, per_channel=True)
    params = {
        "applied": torch.tensor([True, True, False]),
        "brightness": torch.tensor([[1.2, 0.8], [0.7, 1.1], [1.3, 1.3]], dtype=torch.float64),
        "contrast": torch.tensor([[0.9, 1.3], [1.2, 0.6], [0.7, 0.7]], dtype=torch.float64),
        "gamma": torch.tensor([[1.4, 0.8], [0.75, 1.2], [1.5, 1.5]], dtype=torch.float64),
        "order": torch.tensor([[0, 1, 2], [2, 0, 1], [1, 2, 0]]),
    }
    out = jitter(x, params=params)

    def by_hand(image, b, c, g, order):  # one (C, H, W) image, the formulas written out per channel
        result = image.clone()
        for step in order:
            for ch in range(image.shape[0]):
                v = result[ch]
                if step == 0:
                    result[ch] = v * b[ch]
                elif step == 1:
                    result[ch] = v.mean() + c[ch] * (v - v.mean())
                else:
                    lo, hi = v.min(), v.max()
                    result[ch] = lo + (hi - lo) * ((v - lo) / (hi - lo)) ** g[ch]
        return result

    for i in range(2):
        expected = by_hand(x[i], params["brightness"][i], params["contrast"][i], params["gamma"][i],
                           params["order"][i].tolist())
        assert_close_scaled(out[i], expected, rtol=1e-10, msg=f"image {i}")
    assert torch.equal(out[2], x[2])  # not drawn for the jitter: exactly as it was
    assert float(out.max()) > 0 and out.dtype == torch.float64


def test_jitter_draws_independently_per_sample_with_the_papers_probability() -> None:
    torch.manual_seed(0)
    n = 4000
    jitter = IntensityJitter()
    params = jitter.generate_parameters((n, 3, 4, 4))
    applied = params["applied"].float().mean().item()
    assert abs(applied - 0.8) < 4 * math.sqrt(0.8 * 0.2 / n), applied  # p = 0.8, the paper's jitter probability
    for name, (lo, hi) in (("brightness", (0.6, 1.4)), ("contrast", (0.6, 1.4)), ("gamma", (0.7, 1.5))):
        values = params[name]
        assert values.shape == (n, 1) and lo <= float(values.min()) and float(values.max()) <= hi, name
        assert values.unique().numel() > n * 0.99, f"{name} is drawn per sample"
    below = (params["gamma"] < 1).float().mean().item()
    assert abs(below - 0.5) < 4 * math.sqrt(0.25 / n), below  # nnU-Net's gamma: half darkening, half brightening
    orders = params["order"]
    assert all(sorted(row) == [0, 1, 2] for row in orders.tolist())
    assert orders.unique(dim=0).shape[0] == 6  # every order occurs: drawn per image
    assert IntensityJitter(per_channel=True).generate_parameters((5, 13, 4, 4))["gamma"].shape == (5, 13)
    batch_order = IntensityJitter(per_image_order=False).generate_parameters((50, 1, 4, 4))["order"]
    assert (batch_order == batch_order[0]).all()


def test_solarization_is_drawn_per_sample_with_p() -> None:
    torch.manual_seed(0)
    n = 4000
    stage = RandomSolarizeRange(p=0.2)
    x = torch.rand(n, 1, 2, 2)
    out = stage(x)
    applied = stage._params["applied"]
    assert abs(applied.float().mean().item() - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n)
    assert torch.equal(out[~applied], x[~applied])
    assert torch.equal(out[applied], solarize(x[applied]))


def test_no_clipping_for_float_data_in_zero_to_thousand() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8) * 1000
    x[:, :, 0, 0] = 1000.0
    neutral = {"applied": torch.ones(64, dtype=torch.bool), "brightness": torch.ones(64, 1),
               "contrast": torch.ones(64, 1), "gamma": torch.ones(64, 1), "order": torch.tensor([[0, 1, 2]] * 64)}
    assert_close_scaled(IntensityJitter(p=1.0)(x, params=neutral), x, rtol=1e-6)  # factor 1: unchanged
    brighter = dict(neutral, brightness=torch.full((64, 1), 1.4))
    out = IntensityJitter(p=1.0)(x, params=brighter)
    assert_close_scaled(out, x * 1.4, rtol=1e-6)  # up to 1400, not clamped to 1 or 1000
    solarized = RandomSolarizeRange(p=1.0)(x)  # mirrored inside each image's [min, max]: max about the middle
    assert 400 < float(solarized.max()) <= 1000 and float(solarized.min()) >= 0, "the data's scale, not [0, 1]"
    jittered = IntensityJitter(p=1.0)(x)
    assert float(jittered.max()) > 500, "the data's scale, not [0, 1]"
    clipped = IntensityJitter(p=1.0, value_range=(0.0, 1000.0), clip=True)(x, params=brighter)
    assert float(clipped.max()) == 1000.0  # clamping only on request


def test_intensity_stages_keep_device_and_dtype() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            x = torch.rand(4, 2, 6, 6, device=device).to(dtype) * 100
            for stage in (IntensityJitter(p=1.0, per_channel=True), RandomSolarizeRange(p=1.0)):
                y = stage(x)
                assert (y.dtype, y.device.type, y.shape) == (dtype, device, x.shape), (type(stage), dtype)
                assert torch.isfinite(y.float()).all()
