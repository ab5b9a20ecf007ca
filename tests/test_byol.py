"""The BYOL learner end to end, each behaviour checked against an independent computation."""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from byol_wrap import BYOL
from byol_wrap.core.ema import cosine_tau
from byol_wrap.core.hooks import HiddenLayerNotRunError

from conftest import SmallCNN
from helpers import assert_close_scaled, imagenet_normalize_by_hand, train_steps

HEADS = dict(projection_size=16, projection_hidden_size=32)


# ---------------------------------------------------------------- hand-written reference of the whole step
def ref_features(net: SmallCNN, x):
    """SmallCNN up to its pool, with batch statistics (train mode), written out with F.*."""
    def bn(h, m):
        return F.batch_norm(h, None, None, m.weight, m.bias, training=True, eps=m.eps)
    h = F.relu(bn(F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=1), net.bn1))
    h = F.relu(bn(F.conv2d(h, net.conv2.weight, net.conv2.bias, padding=1, stride=2), net.bn2))
    return h.mean(dim=(2, 3))


def ref_mlp(head, x):
    lin1, norm, _, lin2 = head
    h = F.linear(x, lin1.weight, lin1.bias)
    h = F.batch_norm(h, None, None, norm.weight, norm.bias, training=True, eps=norm.eps)
    return F.linear(F.relu(h), lin2.weight, lin2.bias)


def ref_cos_loss(q, z):
    return 2 - 2 * (q * z).sum(-1) / (q.norm(dim=-1) * z.norm(dim=-1))


def ref_loss(learner, v1, v2, concat=False):
    online, online_proj = learner.net, learner.projector
    target = learner.target_net if learner.target_net is not None else learner.net
    target_proj = learner.target_projector if learner.target_projector is not None else learner.projector
    if concat:
        p = ref_mlp(online_proj, ref_features(online, torch.cat([v1, v2])))
        q1, q2 = ref_mlp(learner.predictor, p).chunk(2)
        z1, z2 = ref_mlp(target_proj, ref_features(target, torch.cat([v1, v2]))).detach().chunk(2)
    else:
        p1 = ref_mlp(online_proj, ref_features(online, v1))
        p2 = ref_mlp(online_proj, ref_features(online, v2))
        q1, q2 = ref_mlp(learner.predictor, p1), ref_mlp(learner.predictor, p2)
        z1 = ref_mlp(target_proj, ref_features(target, v1)).detach()
        z2 = ref_mlp(target_proj, ref_features(target, v2)).detach()
    return (ref_cos_loss(q1, z2) + ref_cos_loss(q2, z1)).mean()


def flip(x):
    return x.flip(-1)


def shift(x):
    return (x * 0.5 + 0.25)


def make_learner(net=None, **kwargs):
    torch.manual_seed(0)
    net = net if net is not None else SmallCNN()
    options = dict(image_size=16, hidden_layer="pool", augment_fn=flip, augment_fn2=shift, **HEADS)
    options.update(kwargs)
    return BYOL(net, **options)


@pytest.mark.parametrize("view_batching", ["one_pass", "per_view", "concat"])
def test_loss_equals_hand_written_byol_step(view_batching):
    concat_views = view_batching == "concat"
    learner = make_learner(view_batching=view_batching)
    with torch.no_grad():  # make the target differ from the online network
        for p in learner.target_parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(6, 3, 16, 16)
    loss = learner(x)
    expected = ref_loss(learner, flip(x), shift(x), concat=concat_views)
    assert_close_scaled(loss, expected, rtol=1e-5)
    # and the other choice of batching gives a different (per-view vs mixed BatchNorm) result
    other = ref_loss(learner, flip(x), shift(x), concat=not concat_views)
    assert abs(loss.item() - other.item()) > 1e-6


def test_gradients_reach_online_only():
    learner = make_learner()
    learner(torch.rand(4, 3, 16, 16)).backward()
    assert all(p.grad is not None for p in learner.predictor.parameters())
    assert all(p.grad is not None for p in learner.projector.parameters())
    assert learner.net.conv1.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in learner.target_parameters())


def test_simsiam_variant():
    learner = make_learner(use_momentum=False)
    assert learner.target_net is None and learner.target_projector is None
    x = torch.rand(6, 3, 16, 16)
    assert_close_scaled(learner(x), ref_loss(learner, flip(x), shift(x)), rtol=1e-5)
    with pytest.raises(RuntimeError, match="use_momentum"):
        learner.update_moving_average()


# ---------------------------------------------------------------- target network and EMA
def test_target_starts_as_copy_and_is_not_optimised():
    learner = make_learner()
    for t, o in zip(learner.target_parameters(), learner.online_parameters()):
        assert torch.equal(t, o) and t.data_ptr() != o.data_ptr() and not t.requires_grad
    before = [t.clone() for t in learner.target_parameters()]
    opt = torch.optim.AdamW(learner.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(2):
        loss = learner(torch.rand(4, 3, 16, 16))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, learner.target_parameters()))
    assert not torch.equal(learner.net.conv1.weight, before[0])


@pytest.mark.filterwarnings("ignore::byol_wrap.core.ema.MovingAverageWarning")  # EMA calls without training
def test_update_moving_average_formula_and_fused_ops(monkeypatch):
    learner = make_learner(moving_average_decay=0.9)
    with torch.no_grad():
        for p in learner.online_parameters():
            p.add_(torch.randn_like(p))
    old_target = [t.clone() for t in learner.target_parameters()]
    online = [o.clone() for o in learner.online_parameters()]
    calls = []
    real = torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert learner.update_moving_average() == pytest.approx(0.9)
    assert len(calls) == 1, "one fused multi-tensor call, not a loop over parameters"
    for t, xi, theta in zip(learner.target_parameters(), old_target, online):
        torch.testing.assert_close(t, 0.9 * xi + 0.1 * theta)


@pytest.mark.filterwarnings("ignore::byol_wrap.core.ema.MovingAverageWarning")  # EMA calls without training
def test_tau_schedule_follows_update_calls():
    learner = make_learner(moving_average_decay=0.99, total_steps=8)
    used = [learner.update_moving_average() for _ in range(10)]
    import math
    expected = [1 - 0.01 * (math.cos(math.pi * min(k, 8) / 8) + 1) / 2 for k in range(10)]
    assert used == pytest.approx(expected)
    assert learner.ema_step == 10
    constant = make_learner(moving_average_decay=0.98)
    assert [constant.update_moving_average() for _ in range(3)] == pytest.approx([0.98] * 3)


@pytest.mark.filterwarnings("ignore::byol_wrap.core.ema.MovingAverageWarning")  # EMA calls without training
def test_ema_step_is_saved_and_restored():
    learner = make_learner(total_steps=100)
    for _ in range(7):
        learner.update_moving_average()
    fresh = make_learner(total_steps=100)
    fresh.load_state_dict(learner.state_dict())
    assert fresh.ema_step == 7
    assert fresh.tau == pytest.approx(cosine_tau(7, 100, 0.996))


# ---------------------------------------------------------------- construction has no side effects
def test_construction_leaves_the_net_and_rng_untouched():
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    net.train()
    net.layer2.eval()  # a mix of modes must survive exactly
    net.fc.eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_()
            m.num_batches_tracked.fill_(5)
    state = copy.deepcopy(net.state_dict())
    modes = {name: m.training for name, m in net.named_modules()}
    rng = torch.get_rng_state()
    learner = BYOL(net, image_size=32, hidden_layer="avgpool", **HEADS)
    assert torch.equal(rng, torch.get_rng_state())
    assert {name: m.training for name, m in net.named_modules()} == modes
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert learner.net is net
    assert not any(m._forward_hooks for m in net.modules()), "no hook left behind"


def test_optimizer_built_before_first_forward_holds_every_trainable_parameter():
    learner = make_learner()
    opt = torch.optim.SGD(learner.parameters(), lr=0.1)
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    learner(torch.rand(4, 3, 16, 16)).backward()
    with_grad = [p for p in learner.parameters() if p.grad is not None]
    assert with_grad and all(id(p) in in_opt for p in with_grad)
    assert learner.projector[0].in_features == 16 and learner.predictor[0].in_features == HEADS["projection_size"]


@pytest.mark.parametrize("channels", [1, 4])
def test_other_channel_counts_with_user_augmentations(channels):
    learner = BYOL(SmallCNN(in_channels=channels), image_size=16, hidden_layer="pool",
                   augment_fn=flip, **HEADS)
    assert learner(torch.rand(4, channels, 16, 16)).item() >= 0
    defaults = BYOL(SmallCNN(in_channels=channels), image_size=16, hidden_layer="pool", **HEADS)
    assert defaults(torch.rand(4, channels, 16, 16)).item() >= 0  # channel-agnostic default augmentations


# ---------------------------------------------------------------- representation and hooks
def test_representation_from_dotted_name_index_and_output():
    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()
    x = torch.rand(2, 3, 32, 32)
    xn = imagenet_normalize_by_hand(x)
    with torch.no_grad():
        trunk = nn.Sequential(*list(net.children())[:-2])
        layer4 = trunk(xn)
        layer41 = net.layer4[1](net.layer4[0](nn.Sequential(*list(net.children())[:-3])(xn)))
        logits = net(xn)
    cases = {"avgpool": layer4.mean(dim=(2, 3)), -2: layer4.mean(dim=(2, 3)),
             "layer4.1": layer41.mean(dim=(2, 3)), -1: logits, None: logits}
    for hidden_layer, expected in cases.items():
        learner = BYOL(net, image_size=32, hidden_layer=hidden_layer, **HEADS).eval()
        with torch.no_grad():
            got = learner(x, return_embedding=True, return_projection=False)
        assert_close_scaled(got, expected, rtol=1e-4, msg=str(hidden_layer))
        projection, representation = learner(x, return_embedding=True)
        assert projection.shape == (2, HEADS["projection_size"]) and representation.shape == expected.shape


def test_timm_vit_tokens_are_pooled_by_class_token_or_mean():
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        tokens = net.forward_features(imagenet_normalize_by_hand(x))
    # mean pooling leaves out the class token, as timm's global_pool="avg" does
    patch_mean = tokens[:, net.num_prefix_tokens:].mean(1)
    for pool, expected in (("cls", tokens[:, 0]), ("mean", patch_mean), ("auto", tokens[:, 0])):
        learner = BYOL(net, image_size=32, hidden_layer="norm", token_pool=pool, **HEADS).eval()
        with torch.no_grad():
            got = learner(x, return_embedding=True, return_projection=False)
        assert_close_scaled(got, expected, rtol=1e-4, msg=pool)


def test_unknown_layer_lists_closest_names():
    with pytest.raises(ValueError, match=r"layer4") as info:
        BYOL(torchvision.models.resnet18(), image_size=32, hidden_layer="layer5")
    assert "list_layers" in str(info.value)
    with pytest.raises(ValueError, match="out of range"):
        BYOL(SmallCNN(), image_size=16, hidden_layer=12)
    with pytest.raises(TypeError):
        BYOL(SmallCNN(), image_size=16, hidden_layer=1.5)


def test_layer_that_never_runs_raises():
    net = SmallCNN()
    net.unused = nn.Linear(3, 3)
    with pytest.raises(HiddenLayerNotRunError, match="never ran"):
        BYOL(net, image_size=16, hidden_layer="unused", **HEADS)
    assert issubclass(HiddenLayerNotRunError, RuntimeError)  # callers catching RuntimeError still do


def test_wrapping_twice_stacks_no_hooks_and_deepcopy_is_independent():
    net = SmallCNN()
    a = BYOL(net, image_size=16, hidden_layer="pool", augment_fn=flip, **HEADS)
    b = BYOL(net, image_size=16, hidden_layer="pool", augment_fn=flip, **HEADS)
    x = torch.rand(4, 3, 16, 16)
    a(x), b(x)
    assert not any(m._forward_hooks for m in net.modules())
    twin = copy.deepcopy(a)
    assert twin.net is not net
    before = [p.clone() for p in a.parameters()]
    opt = torch.optim.SGD(twin.parameters(), lr=0.5)
    twin(x).backward()
    opt.step()
    twin.update_moving_average()
    assert all(torch.equal(p, q) for p, q in zip(before, a.parameters()))
    assert not torch.equal(twin.net.conv1.weight, net.conv1.weight)
    torch.testing.assert_close(a(x), ref_loss(a, flip(x), flip(x)))


# ---------------------------------------------------------------- inputs
def test_uint8_images_are_scaled():
    learner = make_learner(augment_fn=None, augment_fn2=None)
    x8 = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    torch.manual_seed(3)
    from_uint8 = learner(x8)
    torch.manual_seed(3)
    from_float = learner(x8.float() / 255)
    torch.testing.assert_close(from_uint8, from_float)


def test_bad_inputs_raise_clear_errors():
    learner = make_learner(augment_fn=None, augment_fn2=None)
    with pytest.raises(ValueError, match="batch of 1"):
        learner(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="shape"):
        learner(torch.rand(4, 1, 16, 16))
    with pytest.raises(ValueError, match="shape"):
        learner(torch.rand(4, 16, 16))
    with pytest.raises(TypeError, match="dtype"):
        learner(torch.ones(4, 3, 16, 16, dtype=torch.int32))
    with pytest.raises(TypeError):
        learner([[0.0]])
    learner.eval()
    assert learner(torch.rand(1, 3, 16, 16), return_embedding=True)[0].shape == (1, HEADS["projection_size"])


def test_image_size_the_net_does_not_accept():
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
    with pytest.raises(ValueError, match="image_size"):
        BYOL(net, image_size=48, hidden_layer=-1, **HEADS)
    with pytest.raises(TypeError, match="image_size"):
        BYOL(SmallCNN(), image_size="big")


def test_default_augmentations_and_float64_nets():
    torch.manual_seed(0)
    learner = BYOL(SmallCNN().double(), image_size=16, hidden_layer="pool", **HEADS)
    loss = learner(torch.rand(4, 3, 20, 20, dtype=torch.float64))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert learner.projector[0].weight.dtype == torch.float64


# ---------------------------------------------------------------- checkpoints
def _train(learner, opt, steps, seed_base):
    def seeded_batches():  # each step's images and augmentations drawn after a seed of its own
        for step in range(steps):
            torch.manual_seed(seed_base + step)
            yield torch.rand(4, 3, 20, 20)

    return [loss.item() for loss in train_steps(learner, opt, seeded_batches())]


def test_resume_from_checkpoint_gives_the_same_losses(tmp_path):
    def fresh():
        torch.manual_seed(0)
        learner = BYOL(SmallCNN(), image_size=16, hidden_layer="pool", total_steps=10, **HEADS)
        return learner, torch.optim.Adam(learner.parameters(), lr=1e-2)

    learner, opt = fresh()
    uninterrupted = _train(learner, opt, 5, seed_base=100)

    learner, opt = fresh()
    first = _train(learner, opt, 3, seed_base=100)
    torch.save({"learner": learner.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    del learner, opt
    resumed, opt = fresh()
    ckpt = torch.load(tmp_path / "ckpt.pt")
    resumed.load_state_dict(ckpt["learner"])
    opt.load_state_dict(ckpt["opt"])
    assert resumed.ema_step == 3
    second = _train(resumed, opt, 2, seed_base=103)
    assert first + second == pytest.approx(uninterrupted, rel=1e-5)


def test_state_dict_holds_online_heads_target_and_step():
    keys = make_learner().state_dict().keys()
    for prefix in ("net.", "projector.", "predictor.", "target_net.", "target_projector."):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert "_extra_state" in keys
