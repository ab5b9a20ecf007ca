"""Each stage on its own, against hand-written references: loss, EMA, tau schedule, heads, augmentations."""
import math

import kornia.augmentation as K
import numpy as np
import pytest
import torch
from torch import nn

from byol_wrap import byol_augmentation, default_augmentations
from byol_wrap.core.augment import blur_kernel_size
from byol_wrap.core.ema import cosine_tau, ema_update_
from byol_wrap.core.heads import MLP, resolve_sync_batchnorm
from byol_wrap.core.loss import byol_loss, symmetric_byol_loss

from helpers import assert_close_scaled


def reference_loss(q: np.ndarray, z: np.ndarray) -> np.ndarray:
    """2 - 2 cos(q, z), per row, in float64 with plain numpy."""
    out = []
    for a, b in zip(q.astype(np.float64), z.astype(np.float64)):
        cos = float(np.dot(a, b) / (np.sqrt(np.dot(a, a)) * np.sqrt(np.dot(b, b))))
        out.append(2.0 - 2.0 * cos)
    return np.array(out)


# ---------------------------------------------------------------- loss
def test_loss_matches_reference():
    torch.manual_seed(0)
    q, z = torch.randn(6, 32), torch.randn(6, 32)
    # the loss lies in [0, 4]: that range is the scale of its float error
    assert_close_scaled(byol_loss(q, z), torch.from_numpy(reference_loss(q.numpy(), z.numpy())), rtol=1e-5, scale=4.0)


def test_loss_is_squared_distance_of_normalised_vectors_and_bounded():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    z = torch.tensor([[2.0, 0.0], [-5.0, 0.0], [0.0, 1.0]])
    # identical direction -> 0, opposite -> 4, (0.6, 0.8) vs (0, 1) -> ||(0.6, -0.2)||^2 = 0.4
    assert_close_scaled(byol_loss(q, z), torch.tensor([0.0, 4.0, 0.4]), rtol=1e-6, scale=4.0)


def test_symmetric_loss_pairs_each_prediction_with_the_other_views_target():
    torch.manual_seed(1)
    q1, q2, z1, z2 = (torch.randn(5, 8) for _ in range(4))
    expected = (reference_loss(q1.numpy(), z2.numpy()) + reference_loss(q2.numpy(), z1.numpy())).mean()
    assert symmetric_byol_loss(q1, q2, z1, z2).item() == pytest.approx(expected, rel=1e-5)


def test_loss_stops_gradient_on_target_side():
    q = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    byol_loss(q, z).sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert z.grad is None


def test_loss_runs_in_float32_under_autocast():
    q = torch.randn(4, 16).bfloat16()
    z = torch.randn(4, 16).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = byol_loss(q, z)
    assert out.dtype == torch.float32
    reference = torch.from_numpy(reference_loss(q.float().numpy(), z.float().numpy()))
    assert_close_scaled(out, reference, rtol=1e-5, scale=4.0)


def test_loss_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        byol_loss(torch.randn(4, 8), torch.randn(4, 9))


# ---------------------------------------------------------------- EMA and tau
def test_ema_update_matches_formula():
    torch.manual_seed(0)
    target = [torch.randn(3, 4), torch.randn(7)]
    online = [torch.randn(3, 4), torch.randn(7)]
    expected = [0.9 * t + 0.1 * o for t, o in zip(target, online)]
    ema_update_(target, online, tau=0.9)
    for got, want in zip(target, expected):
        torch.testing.assert_close(got, want)


def test_ema_update_extremes():
    t, o = [torch.zeros(3)], [torch.ones(3)]
    ema_update_(t, o, tau=1.0)
    assert torch.equal(t[0], torch.zeros(3))
    ema_update_(t, o, tau=0.0)
    assert torch.equal(t[0], torch.ones(3))


def test_ema_update_rejects_bad_input():
    with pytest.raises(ValueError, match="tau"):
        ema_update_([torch.zeros(1)], [torch.zeros(1)], tau=1.5)
    with pytest.raises(ValueError, match="tensors"):
        ema_update_([torch.zeros(1)], [], tau=0.5)
    with pytest.raises(ValueError, match="shape"):
        ema_update_([torch.zeros(2)], [torch.zeros(3)], tau=0.5)


@pytest.mark.parametrize("base", [0.99, 0.996])
def test_cosine_tau_schedule(base):
    total = 10
    for k in range(total + 3):
        kk = min(k, total)
        expected = 1 - (1 - base) * (math.cos(math.pi * kk / total) + 1) / 2
        assert cosine_tau(k, total, base) == pytest.approx(expected, abs=1e-12)
    assert cosine_tau(0, total, base) == pytest.approx(base)
    assert cosine_tau(total // 2, total, base) == pytest.approx((1 + base) / 2)
    assert cosine_tau(total, total, base) == pytest.approx(1.0)


def test_cosine_tau_rejects_bad_arguments():
    with pytest.raises(ValueError):
        cosine_tau(0, 0)
    with pytest.raises(ValueError):
        cosine_tau(-1, 10)
    with pytest.raises(ValueError):
        cosine_tau(0, 10, moving_average_decay=2.0)


# ---------------------------------------------------------------- heads
def test_mlp_structure_and_shapes():
    head = MLP(32, hidden_dim=64, output_dim=16)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (32, 64, 16)
    assert head(torch.randn(4, 32)).shape == (4, 16)


def test_mlp_sync_batchnorm_option():
    assert isinstance(MLP(8, hidden_dim=16, output_dim=4, sync_batchnorm=True)[1], nn.SyncBatchNorm)
    assert not resolve_sync_batchnorm(None)  # no process group here
    with pytest.raises(ValueError, match="hidden_dim"):
        MLP(8, hidden_dim=0, output_dim=4)


# ---------------------------------------------------------------- augmentations
def _find(pipeline, kind):
    return [m for m in pipeline if isinstance(m, kind)]


def test_default_pipelines_follow_the_paper():
    t1, t2 = default_augmentations(224)
    for t in (t1, t2):
        crop = _find(t, K.RandomResizedCrop)[0]
        assert crop.flags["size"] == (224, 224)
        gen = crop._param_generator
        assert tuple(float(v) for v in gen.scale) == pytest.approx((0.08, 1.0))
        assert tuple(float(v) for v in gen.ratio) == pytest.approx((3 / 4, 4 / 3))
        assert _find(t, K.RandomHorizontalFlip)[0].p == 0.5
        jitter = _find(t, K.ColorJitter)[0]
        assert jitter.p == 0.8
        factors = [jitter._param_generator.brightness, jitter._param_generator.contrast,
                   jitter._param_generator.saturation, jitter._param_generator.hue]
        assert [float(f) for f in factors] == pytest.approx([0.4, 0.4, 0.2, 0.1])
        assert _find(t, K.RandomGrayscale)[0].p == 0.2
        assert not _find(t, K.Normalize)  # BYOL normalises after augmenting (its normalize option)
    for t in (t1, t2):
        blur = _find(t, K.RandomGaussianBlur)[0]
        assert blur.flags["kernel_size"] == (23, 23)
        assert tuple(float(v) for v in blur._param_generator.sigma) == pytest.approx((0.1, 2.0))
    assert _find(t1, K.RandomGaussianBlur)[0].p == 1.0
    assert _find(t2, K.RandomGaussianBlur)[0].p == 0.1
    assert not _find(t1, K.RandomSolarize)
    assert _find(t2, K.RandomSolarize)[0].p == 0.2
    assert blur_kernel_size(224) == 23 and blur_kernel_size(32) == 3 and blur_kernel_size(96) % 2 == 1


def test_augmentations_are_drawn_per_sample():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 48, 48)
    batch = image.repeat(8, 1, 1, 1)
    for view in (1, 2):
        out = byol_augmentation(32, view=view, normalize=None)(batch)
        assert out.shape == (8, 3, 32, 32)
        distinct = {tuple(out[i].flatten()[:64].tolist()) for i in range(8)}
        assert len(distinct) == 8, "identical images must get different random crops/colours"


def test_solarization_of_t_prime_is_the_papers():
    # With only the solarization stage forced on, T' maps x -> x if x < 0.5 else 1 - x.
    stage = [m for m in byol_augmentation(8, view=2) if isinstance(m, K.RandomSolarize)][0]
    x = torch.rand(2, 3, 8, 8)
    stage.p = 1.0
    torch.testing.assert_close(stage(x), torch.where(x < 0.5, x, 1 - x))


def test_normalisation_is_configurable():
    t = byol_augmentation(16, normalize=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    norm = t[-1]
    torch.testing.assert_close(norm(torch.full((1, 3, 4, 4), 0.75)), torch.ones(1, 3, 4, 4))
    assert not any(isinstance(m, K.Normalize) for m in byol_augmentation(16, normalize=None))


def test_augmentation_factors_can_be_overridden():
    stages = lambda t: {type(m).__name__: m for m in t}  # noqa: E731
    # the paper's probabilities by default: T blur 1.0, no solarization; T' blur 0.1, solarization 0.2
    t1, t2 = stages(byol_augmentation(32, view=1)), stages(byol_augmentation(32, view=2))
    assert t1["RandomGaussianBlur"].p == 1.0 and "RandomSolarize" not in t1
    assert t2["RandomGaussianBlur"].p == 0.1 and t2["RandomSolarize"].p == 0.2
    assert t1["ColorJitter"].p == 0.8
    changed = stages(byol_augmentation(32, view=2, crop_scale=(0.2, 1.0), jitter_p=0.5, blur_p=0.0, solarize_p=0.3))
    assert "RandomGaussianBlur" not in changed  # probability 0: the stage is left out
    assert changed["RandomSolarize"].p == 0.3 and changed["ColorJitter"].p == 0.5
    crop = changed["RandomResizedCrop"]
    torch.manual_seed(0)
    # every crop box keeps at least 20% of the area, up to pixel rounding (the default scale gives 8%)
    boxes = crop.forward_parameters(torch.Size((256, 3, 64, 64)))["src"]
    sides = boxes[:, 2] - boxes[:, 0] + 1
    areas = sides[:, 0] * sides[:, 1] / (64 * 64)
    assert areas.min() >= 0.19


def test_non_square_output():
    assert byol_augmentation((24, 40))(torch.rand(2, 3, 50, 50)).shape == (2, 3, 24, 40)
    with pytest.raises(ValueError, match="view"):
        byol_augmentation(32, view=3)


def test_shift_hue_matches_colorsys_and_kornia():
    import colorsys
    import math

    from kornia.enhance import adjust_hue

    from byol_wrap.core.augment import shift_hue

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 5, 7, generator=generator, dtype=torch.float64)
    images[0, :, 0, 0] = torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64)  # grey: hue undefined, left as is
    images[1, :, 0, 0] = torch.tensor([0.8, 0.8, 0.1], dtype=torch.float64)  # two channels tie for the maximum
    angles = (torch.rand(6, generator=generator, dtype=torch.float64) - 0.5) * 2 * math.pi
    angles[2] = math.pi  # half a turn
    out = shift_hue(images, angles)
    expected = torch.empty_like(images)
    for n in range(6):
        for i in range(5):
            for j in range(7):
                h, s, v = colorsys.rgb_to_hsv(*images[n, :, i, j].tolist())
                expected[n, :, i, j] = torch.tensor(colorsys.hsv_to_rgb((h + angles[n].item() / (2 * math.pi)) % 1.0,
                                                                        s, v), dtype=torch.float64)
    assert_close_scaled(out, expected, rtol=1e-9, msg="shift_hue vs colorsys")
    assert_close_scaled(shift_hue(images.float(), angles.float()), adjust_hue(images.float(), angles.float()),
                        rtol=1e-5, msg="shift_hue vs kornia.enhance.adjust_hue")


def test_default_colour_jitter_order_per_batch_per_image_on_request_and_the_fast_hue_step():
    import byol_wrap.core.augment as augment

    calls = []
    original = augment.shift_hue

    def spy(image, factor):
        calls.append(image.shape[0])
        return original(image, factor)

    t1, t2 = default_augmentations(16)
    for t in (t1, t2):
        jitter = _find(t, K.ColorJitter)[0]
        assert isinstance(jitter, augment.ColorJitter) and not jitter.per_image_order, type(jitter)
        torch.manual_seed(0)
        jitter(torch.rand(6, 3, 16, 16))
        orders = jitter._params["sample_order"]
        assert (orders == orders[0]).all(), f"the default draws one order per batch (as Kornia): {orders.tolist()}"
    paper = _find(byol_augmentation(16, view=2, jitter_order="image"), K.ColorJitter)[0]
    assert paper.per_image_order
    with pytest.raises(ValueError, match="jitter_order"):
        byol_augmentation(16, jitter_order="sample")
    augment.shift_hue = spy
    try:
        jitter = augment.ColorJitter(hue=0.1, p=1.0)
        torch.manual_seed(0)
        jitter(torch.rand(4, 3, 16, 16))
    finally:
        augment.shift_hue = original
    assert sum(calls) == 4, calls  # each image's hue step once, through shift_hue


@pytest.mark.parametrize("per_image_order", [True, False])
def test_colour_jitter_applies_each_images_own_order(per_image_order):
    """Against a per-image reference: Kornia's adjustment functions (its adjust_hue, not shift_hue), one image
    at a time, in the order drawn for that image."""
    from kornia.enhance import (
        adjust_brightness_accumulative,
        adjust_contrast_with_mean_subtraction,
        adjust_hue,
        adjust_saturation_with_gray_subtraction,
    )

    from byol_wrap.core.augment import JITTER_FACTORS, ColorJitter

    reference_steps = (adjust_brightness_accumulative, adjust_contrast_with_mean_subtraction,
                       adjust_saturation_with_gray_subtraction, lambda x, turns: adjust_hue(x, turns * 2 * math.pi))
    jitter = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=0.75,
                         per_image_order=per_image_order)
    torch.manual_seed(0)
    x = torch.rand(24, 3, 6, 6)
    out = jitter(x)
    params = jitter._params
    orders = params["sample_order"]
    distinct = len({tuple(order.tolist()) for order in orders})
    assert distinct > 4 if per_image_order else distinct == 1, orders
    chosen = params["batch_prob"].bool()
    assert 0 < int(chosen.sum()) < 24
    for i in range(24):
        expected = x[i:i + 1].clamp(0, 1)
        if chosen[i]:
            for step in orders[i].tolist():
                expected = reference_steps[step](expected, params[JITTER_FACTORS[step]][i:i + 1])
        else:
            expected = x[i:i + 1]
        assert_close_scaled(out[i:i + 1], expected.clamp(0, 1) if chosen[i] else expected, rtol=1e-5,
                            msg=f"image {i}, order {orders[i].tolist()}, chosen {bool(chosen[i])}")
    repeated = jitter(x, params=params)
    assert torch.equal(repeated, out), "the same params must give the same images"


def test_colour_jitter_orders_are_uniform_permutations():
    from byol_wrap.core.augment import ColorJitter

    torch.manual_seed(0)
    orders = ColorJitter(0.4, 0.4, 0.2, 0.1).generate_parameters(torch.Size((4800, 3, 4, 4)))["sample_order"]
    assert torch.equal(orders.sort(dim=1).values, torch.arange(4).expand(4800, 4)), "each row is a permutation"
    counts = torch.unique(orders, dim=0, return_counts=True)[1]
    assert len(counts) == 24 and counts.min() > 130 and counts.max() < 275, counts.tolist()  # 200 expected


def test_shift_hue_refuses_what_is_not_rgb_or_a_wrong_number_of_angles():
    from byol_wrap.core.augment import shift_hue

    with pytest.raises(ValueError, match="RGB"):
        shift_hue(torch.rand(2, 1, 4, 4), 0.1)
    with pytest.raises(ValueError, match="one angle, or one per image"):
        shift_hue(torch.rand(2, 3, 4, 4), torch.ones(3))
    single = torch.rand(3, 4, 4)
    assert_close_scaled(shift_hue(single, 0.5), shift_hue(single[None], torch.tensor([0.5]))[0], rtol=1e-6,
                        msg="an unbatched image")
