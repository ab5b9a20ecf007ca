"""BYOL(memory_format=...): channels-last views on the CPU, checked against contiguous views."""
import copy

import pytest
import torch
from torch import nn

from byol_wrap import BYOL
from byol_wrap.core.memory_format import channels_last_problem, wants_channels_last

from helpers import assert_close_scaled, assert_tensors_close

pytestmark = pytest.mark.usefixtures("one_thread")


def conv_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


class ViewFlattenNet(nn.Module):
    """A home-made net that flattens a feature map with ``.view``: fails on channels-last maps."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 7 * 7, 8)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(y.view(y.shape[0], -1))


class LayoutReadingNet(nn.Module):
    """A net whose output depends on the memory layout (reads the storage in order)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, x):
        y = self.conv(x)
        return torch.as_strided(y, (y.shape[0], 16), (y.stride(0), 1))


class TrainingViewNet(nn.Module):
    """Flattens with ``.view`` in training mode only: the eval-mode check at construction cannot see it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return y.view(y.shape[0], -1) if self.training else y.flatten(1)


def record_input_layouts(net):
    """A list that receives, for every forward of ``net``'s first conv, whether its input was channels-last."""
    seen = []
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    first.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous(
        memory_format=torch.channels_last)))
    return seen


def learners(make, **kwargs):
    """The same learner with memory_format 'auto' and 'preserve' (identical weights)."""
    torch.manual_seed(0)
    options = dict(image_size=16, hidden_layer=None, projection_size=8, projection_hidden_size=16,
                   augment_fn=lambda x: x.flip(-1), augment_fn2=lambda x: x * 0.5, **kwargs)
    auto = BYOL(make(), **options)
    preserve = copy.deepcopy(auto)
    preserve.memory_format = "preserve"
    return auto, preserve


@pytest.mark.parametrize("view_batching", ["one_pass", "per_view", "concat"])
def test_auto_gives_channels_last_views_and_the_same_training_step(view_batching):
    auto, preserve = learners(conv_net, view_batching=view_batching)
    seen_auto, seen_preserve = record_input_layouts(auto.net), record_input_layouts(preserve.net)
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    loss_auto, loss_preserve = auto(x), preserve(x)
    loss_auto.backward()
    loss_preserve.backward()
    assert seen_auto and all(seen_auto), seen_auto
    assert seen_preserve and not any(seen_preserve), seen_preserve
    assert_close_scaled(loss_auto, loss_preserve, rtol=1e-5, msg="loss")
    grads = lambda learner: {n: p.grad for n, p in learner.named_parameters() if p.grad is not None}  # noqa: E731
    assert grads(auto).keys() == grads(preserve).keys()
    assert_tensors_close(grads(auto), grads(preserve), rtol=1e-4, scale_rtol=1e-5)
    buffers = lambda learner: {n: b.float() for n, b in learner.named_buffers()}  # noqa: E731
    assert_tensors_close(buffers(auto), buffers(preserve), rtol=1e-5, scale_rtol=1e-6)
    # the user's weights keep their layout
    assert all(p.is_contiguous() for p in auto.net.parameters())


def test_embedding_is_the_same_in_both_layouts():
    auto, preserve = learners(conv_net)
    auto.eval()
    preserve.eval()
    seen = record_input_layouts(auto.net)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    projection, representation = auto(x, return_embedding=True)
    expected_projection, expected_representation = preserve(x, return_embedding=True)
    assert seen == [True]
    assert_close_scaled(representation, expected_representation, rtol=1e-5, msg="representation")
    assert_close_scaled(projection, expected_projection, rtol=1e-5, msg="projection")


def test_a_net_that_fails_on_channels_last_falls_back_under_auto_and_is_refused_when_asked():
    auto = BYOL(ViewFlattenNet(), image_size=16, hidden_layer=None, projection_size=8, projection_hidden_size=16)
    seen = record_input_layouts(auto.net)
    auto(torch.rand(4, 3, 16, 16)).backward()
    assert seen and not any(seen), seen
    with pytest.raises(ValueError, match="channels_last.*ViewFlattenNet fails on channels-last input"):
        BYOL(ViewFlattenNet(), image_size=16, hidden_layer=None, memory_format="channels_last")


def test_a_layout_dependent_net_is_detected():
    net = LayoutReadingNet()
    problem = channels_last_problem(net, net, (3, 16, 16), torch.device("cpu"), torch.float32)
    assert problem is not None and "depends on the memory layout" in problem, problem
    assert channels_last_problem(conv_net(), conv_net(), (3, 16, 16), torch.device("cpu"), torch.float32) is None


def test_nets_without_conv2d_and_non_image_inputs_are_left_alone():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 8))
    learner = BYOL(mlp, image_size=8, hidden_layer=None, projection_size=8, projection_hidden_size=16)
    assert learner._channels_last is False
    conv1d = nn.Sequential(nn.Conv1d(2, 4, 3), nn.AdaptiveAvgPool1d(1), nn.Flatten())
    learner1d = BYOL(conv1d, input_shape=(2, 20), hidden_layer=None, augment_fn=lambda x: x.flip(-1),
                     projection_size=8, projection_hidden_size=16)
    assert learner1d._channels_last is False
    strides = []
    conv1d[0].register_forward_pre_hook(lambda module, args: strides.append(args[0].stride()))
    learner1d(torch.rand(4, 2, 20)).backward()
    assert strides and all(stride == (40, 20, 1) for stride in strides), strides  # contiguous (N, 2, 20)
    assert not wants_channels_last("auto", True, torch.zeros(2, 4, 20))
    assert not wants_channels_last("preserve", True, torch.zeros(2, 3, 8, 8))
    assert wants_channels_last("channels_last", True, torch.zeros(2, 3, 8, 8))


def test_an_unknown_memory_format_is_a_value_error():
    with pytest.raises(ValueError, match="memory_format must be one of"):
        BYOL(conv_net(), image_size=16, hidden_layer=None, memory_format="nhwc")


def test_the_check_leaves_the_net_and_the_global_rng_alone():
    net = conv_net().train()
    before = copy.deepcopy(net.state_dict())
    rng = torch.get_rng_state()
    learner = BYOL(net, image_size=16, hidden_layer=None, projection_size=8, projection_hidden_size=16)
    assert learner._channels_last is True
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in net.modules())
    after = net.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed


def test_channels_last_when_asked_gives_channels_last_views_and_the_same_loss():
    auto, preserve = learners(conv_net)
    asked = copy.deepcopy(preserve)
    asked.memory_format = "channels_last"
    asked._channels_last = True  # as BYOL(memory_format="channels_last") sets it after its check
    built = BYOL(conv_net(), image_size=16, hidden_layer=None, memory_format="channels_last")
    assert built._channels_last is True
    seen = record_input_layouts(asked.net)
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    assert_close_scaled(asked(x), preserve(x), rtol=1e-5, msg="loss, channels_last vs preserve")
    assert seen and all(seen), seen


def test_a_net_that_fails_on_channels_last_only_in_training_names_the_fix():
    learner = BYOL(TrainingViewNet(), image_size=16, hidden_layer=None, projection_size=8,
                   projection_hidden_size=16)
    assert learner._channels_last is True  # the eval-mode check passes
    before = {name: b.clone() for name, b in learner.named_buffers()}
    with pytest.raises(RuntimeError, match="memory_format='preserve'"):
        learner(torch.rand(4, 3, 16, 16))
    changed = [name for name, b in learner.named_buffers() if not torch.equal(b, before[name])]
    assert not changed, f"a failed step changed {changed}"
    preserve = BYOL(TrainingViewNet(), image_size=16, hidden_layer=None, projection_size=8,
                    projection_hidden_size=16, memory_format="preserve")
    preserve(torch.rand(4, 3, 16, 16)).backward()
