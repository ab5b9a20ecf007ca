"""Property-based check (issue 11, item 7): over batch sizes, channel counts, image sizes, hidden
layers, default or custom augmentations and ``view_batching`` (``concat_views``), every input either trains (finite
loss in [0, 8], the target without gradient, without optimizer state and unchanged by the
optimizer step) or raises a clear error (ValueError/TypeError with a message), never an assert,
an IndexError or a raw torch error."""
import pytest
import torch
from torch import nn

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from byol_wrap import BYOL  # noqa: E402
from byol_wrap.core.checks import NonFiniteError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        return self.fc(self.flatten(self.pool(self.conv2(x))))


VALID_LAYERS = [-1, -2, -3, 0, 3, None, "conv1", "bn1", "relu", "conv2", "pool", "flatten", "fc"]
LAYERS = VALID_LAYERS + ["nope", 9, -9, 1.5, True]


def flip(x):
    return x.flip(-1)


@settings(max_examples=20, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(  # weighted towards inputs that train, with every kind of wrong input among them
    batch=st.sampled_from([2, 3, 5, 2, 3, 0, 1]),
    net_channels=st.sampled_from([3, 3, 1, 4]),
    data_channels=st.sampled_from([None, None, None, 1, 3]),  # None: the net's
    image_size=st.one_of(st.integers(6, 24), st.integers(1, 5)),
    data_size=st.sampled_from([None, None, None, 8, 17]),  # None: image_size
    hidden_layer=st.one_of(st.sampled_from(VALID_LAYERS), st.sampled_from(LAYERS)),
    custom=st.booleans(),
    view_batching=st.sampled_from(["auto", "per_view", "one_pass", "concat"]),
    train=st.sampled_from([True, True, False]),
    uint8=st.booleans(),
)
def test_every_input_trains_or_raises_a_clear_error(batch, net_channels, data_channels, image_size, data_size,
                                                    hidden_layer, custom, view_batching, train, uint8):
    torch.manual_seed(0)
    options = dict(hidden_layer=hidden_layer, projection_size=4, projection_hidden_size=8,
                   view_batching=view_batching)
    if custom:
        options["augment_fn"] = flip
    try:
        learner = BYOL(Net(net_channels), image_size, **options)
    except (ValueError, TypeError) as error:
        assert str(error), "an error without a message"
        event(f"construction: {type(error).__name__}")
        return
    learner.train(train)
    size = data_size or image_size
    x = torch.rand(batch, data_channels or net_channels, size, size)
    if uint8:
        x = (x * 255).to(torch.uint8)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    target = {name: p.clone() for name, p in learner.named_parameters() if name.startswith("target_")}
    try:
        loss = learner(x)
    except (ValueError, TypeError, NonFiniteError) as error:
        assert str(error), "an error without a message"
        event(f"forward: {str(error)[:70]}")
        return
    event("trained")
    value = loss.item()
    assert 0.0 <= value <= 8.0 * (1 + 1e-5), value
    loss.backward()
    opt.step()
    for name, p in learner.named_parameters():
        if name.startswith("target_"):
            assert not p.requires_grad and p.grad is None, name
            assert p not in opt.state, name
            assert torch.equal(p, target[name]), name
    if learner.use_momentum:
        learner.update_moving_average()
