"""Issue 11: nothing silent, nothing lost.

Non-finite inputs, losses and weights raise before anything the user owns changes; tuple
outputs, in-place ops after the hidden layer, odd inputs and far-off float ranges get clear
messages; checkpoints hold no augmentation state; an exact resume from the user's own loop;
every keyword of byol-pytorch's BYOL is accepted.
"""
import inspect
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import byol_wrap
from byol_wrap import BYOL, get_rng_state, set_rng_state
from byol_wrap.core.checks import ImageRangeWarning, NonFiniteError

from conftest import SmallCNN
from helpers import train_steps

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(projection_size=8, projection_hidden_size=16)


def make_learner(seed=0, **kwargs):
    torch.manual_seed(seed)
    options = dict(image_size=16, hidden_layer="pool", **SMALL)
    options.update(kwargs)
    return BYOL(SmallCNN(), **options)


def snapshot(module):
    """Every tensor of the state dict, cloned (the extra state as it is)."""
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in module.state_dict().items()}


def changed_entries(before, module):
    """Names of state-dict entries that differ from ``before`` (NaN == NaN)."""
    after = module.state_dict()
    out = []
    for key, old in before.items():
        new = after[key]
        if isinstance(old, torch.Tensor):
            if not torch.equal(torch.nan_to_num(old.float(), 7.0), torch.nan_to_num(new.float(), 7.0)):
                out.append(key)
        elif old != new:
            out.append(key)
    return out


def images(n=4, size=16, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- 1. non-finite inputs, losses, weights
def test_nonfinite_error_is_a_floating_point_and_a_runtime_error():
    assert issubclass(NonFiniteError, FloatingPointError) and issubclass(NonFiniteError, RuntimeError)
    assert byol_wrap.NonFiniteError is NonFiniteError


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_input_raises_before_any_statistic_changes(bad):
    learner = make_learner()
    x = images()
    x[2, 1, 3, 4] = bad
    before = snapshot(learner)
    rng = torch.get_rng_state()
    with pytest.raises(NonFiniteError, match=r"input batch .*samples \[2\] of 4") as info:
        learner(x)
    print(info.value)
    assert changed_entries(before, learner) == []
    assert torch.equal(torch.get_rng_state(), rng), "the check must come before the augmentations draw"
    # the same holds for embeddings in train mode (which update BatchNorm statistics)
    with pytest.raises(NonFiniteError):
        learner(x, return_embedding=True)
    assert changed_entries(before, learner) == []


def test_nonfinite_loss_from_finite_inputs_puts_batchnorm_statistics_back():
    learner = make_learner()
    with torch.no_grad():
        learner.net.conv2.weight[0, 0, 0, 0] = float("nan")  # bn1 sees finite values, bn2 NaN
    before = snapshot(learner)
    with pytest.raises(NonFiniteError, match=r"loss is nan.*net\.conv2\.weight") as info:
        learner(images())
    print(info.value)
    assert changed_entries(before, learner) == []  # net, target and heads: BatchNorm statistics as before
    # the statistics really do move in a forward, so the restore above is not vacuous
    with torch.no_grad():
        learner.net.conv2.weight.copy_(learner.target_net.conv2.weight)
    learner(images())
    assert "net.bn1.running_mean" in changed_entries(before, learner)


@pytest.mark.filterwarnings("ignore::byol_wrap.core.ema.MovingAverageWarning")  # EMA calls without training
def test_update_moving_average_refuses_nonfinite_online_weights():
    learner = make_learner()
    with torch.no_grad():
        first_linear = next(m for m in learner.projector.modules() if isinstance(m, nn.Linear))
        first_linear.weight[1, 2] = float("inf")
    target_before = [t.clone() for t in learner.target_parameters()]
    step_before = learner.ema_step
    with pytest.raises(NonFiniteError, match=r"projector\.") as info:
        learner.update_moving_average()
    print(info.value)
    assert all(torch.equal(a, b) for a, b in zip(target_before, learner.target_parameters()))
    assert learner.ema_step == step_before


def test_check_finite_false_turns_the_checks_off():
    learner = make_learner(check_finite=False)
    x = images()
    x[0] = float("nan")  # a whole sample: a single pixel may be cropped away
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no range warning either
        assert torch.isnan(learner(x))
        learner(images() * 255)
    with torch.no_grad():
        learner.net.conv1.weight[0, 0, 0, 0] = float("nan")
    learner.update_moving_average()
    assert torch.isnan(learner.target_net.conv1.weight).any()
    with pytest.raises(TypeError):
        BYOL(SmallCNN(), 16, "pool", 8, 16, None, None, 0.99, None, True, None, False)  # keyword-only


def test_finite_batches_train_unchanged_by_the_checks():
    """Same seed, with and without checks: bitwise the same loss."""
    a, b = make_learner(), make_learner(check_finite=False)
    torch.manual_seed(5)
    loss_a = a(images())
    torch.manual_seed(5)
    loss_b = b(images())
    assert torch.equal(loss_a, loss_b), (loss_a.item(), loss_b.item())


# ---------------------------------------------------------------- 2. tuple outputs
class LogitsAndFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        features = self.body(x)
        return self.fc(features), features


def test_tuple_output_with_hidden_layer_minus_one_is_an_error_listing_the_elements():
    with pytest.raises(ValueError) as info:
        BYOL(LogitsAndFeatures(), 16, hidden_layer=-1, **SMALL)
    message = str(info.value)
    print(message)
    for part in ("tuple of 2", "[0]", "(2, 10)", "[1]", "(2, 6)", "hidden_layer", "pool_fn"):
        assert part in message, part


def test_layer_table_has_no_output_row_for_an_ambiguous_tuple():
    rows = byol_wrap.list_layers(LogitsAndFeatures(), 16)
    assert None not in [row["name"] for row in rows] and "body" in [row["name"] for row in rows]


def test_tuple_output_choose_with_pool_fn_or_hidden_layer():
    by_pool_fn = BYOL(LogitsAndFeatures(), 16, hidden_layer=-1, pool_fn=lambda out: out[1], **SMALL)
    by_layer = BYOL(LogitsAndFeatures(), 16, hidden_layer="body", **SMALL)
    assert by_pool_fn.representation_size == by_layer.representation_size == 6
    by_pool_fn.eval()
    x = images()
    rep = by_pool_fn(x, return_embedding=True, return_projection=False)
    expected = by_pool_fn.net.body(by_pool_fn.normalizer(x) if by_pool_fn.normalizer is not None else x)
    torch.testing.assert_close(rep, expected)


# ---------------------------------------------------------------- 3. in-place op after the hidden layer
class InplaceAfterHidden(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)  # overwrites bn's output after the hook read it
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.bn(self.conv(x)))).flatten(1))


def test_early_exit_false_gives_the_early_exit_result_despite_an_inplace_op_after_the_layer():
    results = {}
    for early_exit in (True, False):
        torch.manual_seed(0)
        learner = BYOL(InplaceAfterHidden(), 16, hidden_layer="bn", early_exit=early_exit, **SMALL)
        torch.manual_seed(3)
        loss = learner(images())
        loss.backward()
        learner.eval()
        rep = learner(images(seed=2), return_embedding=True, return_projection=False)
        results[early_exit] = (loss.detach(), rep.detach(), learner.net.conv.weight.grad.clone())
    (loss_t, rep_t, grad_t), (loss_f, rep_f, grad_f) = results[True], results[False]
    assert (rep_t < 0).any(), "the representation is the BatchNorm output, before the ReLU"
    torch.testing.assert_close(rep_f, rep_t)
    torch.testing.assert_close(loss_f, loss_t)
    torch.testing.assert_close(grad_f, grad_t)


# ---------------------------------------------------------------- 4. smaller unclear cases
@pytest.mark.parametrize("train", [True, False])
def test_zero_dim_tensor_gets_a_message(train):
    learner = make_learner().train(train)
    with pytest.raises(ValueError, match="0-d") as info:
        learner(torch.tensor(0.5))
    print(info.value)


def test_empty_batch_in_eval_mode_is_an_error_not_nan():
    learner = make_learner().eval()
    with pytest.raises(ValueError, match="empty batch") as info:
        learner(torch.rand(0, 3, 16, 16))
    print(info.value)


class FixedSize(nn.Module):
    """Flattens its feature map: the representation size depends on the image size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(self.flatten(self.conv(x)))


@pytest.mark.parametrize("hidden_layer", ["flatten", -1])
def test_embedding_at_a_size_the_net_cannot_take(hidden_layer):
    learner = BYOL(FixedSize(), 8, hidden_layer=hidden_layer, augment_fn=lambda x: x, **SMALL).eval()
    assert learner(torch.rand(2, 3, 8, 8), return_embedding=True)[0].shape == (2, 8)
    with pytest.raises(ValueError, match=r"(3, 16, 16).*(3, 8, 8)|(3, 8, 8).*(3, 16, 16)") as info:
        learner(torch.rand(2, 3, 16, 16), return_embedding=True)
    print(info.value)


def test_net_dtype_changed_after_construction():
    learner = make_learner()
    learner.net.double()
    with pytest.raises(ValueError, match=r"float64.*float32|float32.*float64") as info:
        learner(images())
    print(info.value)
    assert "learner.to(" in str(info.value)


@pytest.mark.parametrize("make", [lambda x: x * 255, lambda x: torch.randn_like(x)], ids=["0-255", "normal"])
def test_float_images_far_outside_unit_range_warn_once(make):
    learner = make_learner()
    x = make(images(8))
    with pytest.warns(ImageRangeWarning, match=r"\[0, 1\]") as record:
        learner(x)
    print(record[0].message)
    lo, hi = x.min().item(), x.max().item()
    assert f"{hi:.4g}" in str(record[0].message) and f"{lo:.4g}" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learner(x)  # once per learner


def test_unit_range_and_uint8_images_do_not_warn():
    learner = make_learner()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learner(images())
        learner((images() * 255).to(torch.uint8))


# ---------------------------------------------------------------- 5. no augmentation state in checkpoints
def test_state_dict_holds_no_augmentation_state():
    keys = list(make_learner().state_dict())
    assert not [k for k in keys if k.startswith(("augment", "normalizer"))], keys


def test_checkpoints_of_default_and_custom_augmentation_learners_load_into_each_other_strictly():
    default = make_learner(seed=1)
    custom = make_learner(seed=2, augment_fn=lambda x: x.flip(-1))
    default.load_state_dict(custom.state_dict(), strict=True)
    custom.load_state_dict(make_learner(seed=3).state_dict(), strict=True)
    torch.testing.assert_close(custom.net.conv1.weight, make_learner(seed=3).net.conv1.weight)


def test_old_checkpoints_with_augmentation_buffers_still_load_strictly():
    learner = make_learner()
    old = dict(learner.state_dict())
    old["augment2.5._param_generator.thresholds"] = torch.tensor([0.5])  # what 0.1.0 saved
    old["augment1.0._param_generator.scale"] = torch.tensor([0.08, 1.0])
    make_learner(seed=4).load_state_dict(old, strict=True)
    # also below a prefix, as inside a LightningModule
    parent = nn.ModuleDict({"learner": make_learner(seed=4)})
    parent.load_state_dict({f"learner.{k}": v for k, v in old.items()}, strict=True)
    # the augmentations still work afterwards
    parent["learner"](images())


# ---------------------------------------------------------------- 6. exact resume from your own loop
def _run(learner, opt, batches):
    return [loss.item() for loss in train_steps(learner, opt, batches)]


def test_exact_resume_from_the_users_own_loop(tmp_path):
    batches = [images(6, seed=s) for s in range(6)]

    learner = make_learner(seed=0, total_steps=6)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    torch.manual_seed(42)
    uninterrupted = _run(learner, opt, batches)

    learner = make_learner(seed=0, total_steps=6)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    torch.manual_seed(42)
    first = _run(learner, opt, batches[:3])
    # the README recipe
    torch.save({"learner": learner.state_dict(), "optimizer": opt.state_dict(), "rng": get_rng_state()},
               tmp_path / "checkpoint.pt")
    del learner, opt
    torch.manual_seed(1234)  # a fresh process: another state everywhere

    learner = make_learner(seed=7, total_steps=6)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    learner.load_state_dict(checkpoint["learner"])
    opt.load_state_dict(checkpoint["optimizer"])
    set_rng_state(checkpoint["rng"])
    resumed = first + _run(learner, opt, batches[3:])
    assert resumed == uninterrupted, (resumed, uninterrupted)

    # without the RNG state the augmentations differ, so the test above is not vacuous
    learner.load_state_dict(checkpoint["learner"])
    opt.load_state_dict(checkpoint["optimizer"])
    assert _run(learner, opt, batches[3:4]) != uninterrupted[3:4]


# ---------------------------------------------------------------- byol-pytorch's keywords
def test_every_keyword_of_byol_pytorch_is_accepted():
    byol_pytorch = pytest.importorskip("byol_pytorch")
    theirs = inspect.signature(byol_pytorch.BYOL.__init__).parameters
    ours = inspect.signature(BYOL.__init__).parameters
    missing = [name for name in theirs if name not in ours]
    assert not missing, f"byol-pytorch keywords BYOL does not accept: {missing}"
    defaults = {name: p.default for name, p in theirs.items()
                if p.default is not inspect.Parameter.empty and name not in ("use_simplicial_embeddings",)}
    defaults.update(projection_size=8, projection_hidden_size=16)
    learner = BYOL(SmallCNN(), image_size=16, use_simplicial_embeddings=False, **defaults)
    assert learner(images()).isfinite()
    with pytest.raises(ValueError, match="use_momentum") as info:  # byol-pytorch's positional order
        BYOL(SmallCNN(), 16, "pool", 8, 16, None, None, 0.99, True)
    print(info.value)
    with pytest.raises(ValueError, match="simplicial") as info:
        BYOL(SmallCNN(), image_size=16, use_simplicial_embeddings=True, **SMALL)
    print(info.value)
    assert "use_simplicial_embeddings=False" in str(info.value)


# ---------------------------------------------------------------- 9. soak benchmark smoke run
@pytest.mark.integration
def test_soak_script_runs(tmp_path):
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--steps", "6", "--sample-every", "2", "--batch-size", "4",
         "--image-size", "16", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,  # -m from the root: this checkout's byol_wrap
    )
    assert result.returncode == 0, result.stderr
    import json

    data = json.loads(out.read_text())
    assert [s["step"] for s in data["samples"]] == [0, 2, 4, 6]
    assert data["hooks_left"] == 0 and all(s["rss_mb"] > 0 for s in data["samples"])
    assert "rss_drift_after_warmup" in data and "rss_trend_after_warmup" in data


@pytest.mark.integration
def test_finite_checks_benchmark_runs(tmp_path):
    out = tmp_path / "cpu.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.finite_checks", "--models", "small_cnn_w32", "--batch-size", "4",
         "--image-size", "16", "--rounds", "2", "--steps-per-round", "1", "--projection-hidden-size", "64",
         "--ema-rounds", "2", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    import json

    payload = json.loads(out.read_text())
    (row,) = payload["results"]
    ema = payload["ema"]
    assert ema["rounds"] == 2 and ema["median_ms"]["fused_with_check"] > 0
    assert ema["byol_pytorch_loop/fused_with_check"]["median"] > 0
    assert row["step_ms_checks_on"] > 0 and row["median_ratio_on_off"] > 0
    assert set(row["checks_alone_ms"]) == {"input_check", "batchnorm_snapshot", "loss_check", "ema_weight_check",
                                           "total"}
