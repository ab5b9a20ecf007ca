"""The public namespace: what ``import byol_wrap`` exports and costs, the deprecated aliases of renamed
names (each warns and still works), and the normalisation rule of ``BYOL(normalize=...)``."""
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import byol_wrap
from byol_wrap import BYOL
from byol_wrap.core.augment import IMAGENET_MEAN
from byol_wrap.core.ema import cosine_tau
from byol_wrap.core.heads import MLP, resolve_sync_batchnorm
from byol_wrap.core.hooks import HiddenLayerNotRunError, RepresentationExtractor
from byol_wrap.core.optim import paper_optimizer_and_scheduler, weight_decay_groups

from conftest import SmallCNN
from helpers import imagenet_normalize_by_hand

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def tiny_learner(**kwargs) -> BYOL:
    torch.manual_seed(0)
    return BYOL(SmallCNN(width=2), image_size=8, hidden_layer="pool", projection_size=4, projection_hidden_size=8,
                **kwargs)


def features(net: SmallCNN, x: torch.Tensor) -> torch.Tensor:
    """The pooled representation, computed without byol_wrap."""
    return net.eval().features(x).mean(dim=(2, 3))


# ---------------------------------------------------------------- namespace
def test_all_lists_what_users_call_and_every_name_resolves():
    for name in byol_wrap.__all__:
        assert getattr(byol_wrap, name) is not None
    assert "pool" not in byol_wrap.__all__ and "format_layers" not in byol_wrap.__all__


def test_old_building_block_names_stay_importable_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from byol_wrap import IMAGENET_MEAN as mean
        from byol_wrap import MLP as mlp
        from byol_wrap import cosine_tau as tau
        from byol_wrap import pool
    from byol_wrap.core.pooling import pool as pooling_pool

    assert mlp is MLP and tau is cosine_tau and mean == IMAGENET_MEAN and pool is pooling_pool


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        byol_wrap.no_such_name  # noqa: B018


@pytest.mark.integration
def test_import_loads_no_training_extras():
    # torch itself may import tqdm (torch.hub); what matters is that byol_wrap adds none of these
    code = (
        "import sys, torch, torchvision, kornia\n"
        "before = set(sys.modules)\n"
        "import byol_wrap\n"
        "heavy = ('tqdm', 'matplotlib', 'timm', 'sklearn', 'tensorboard', 'lightning', 'pytorch_lightning')\n"
        "added = sorted(m for m in set(sys.modules) - before if m.split('.')[0] in heavy)\n"
        "print(added)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ---------------------------------------------------------------- deprecated aliases
def test_top_level_renamed_functions_warn_and_work():
    learner = tiny_learner(total_steps=10)
    with pytest.warns(DeprecationWarning, match="weight_decay_groups"):
        groups = byol_wrap.param_groups(learner, 1e-3)
    assert [len(g["params"]) for g in groups] == [len(g["params"]) for g in weight_decay_groups(learner, 1e-3)]
    pytest.importorskip("timm")
    with pytest.warns(DeprecationWarning, match="paper_optimizer_and_scheduler"):
        optimizer, scheduler = byol_wrap.paper_optimizer(learner, batch_size=64, total_steps=10)
    expected, _ = paper_optimizer_and_scheduler(learner, batch_size=64, total_steps=10)
    assert optimizer.defaults["lr"] == expected.defaults["lr"]


def test_module_level_aliases_warn_and_work():
    from byol_wrap.core.heads import use_sync_batchnorm
    from byol_wrap.core.optim import param_groups

    with pytest.warns(DeprecationWarning, match="resolve_sync_batchnorm"):
        assert use_sync_batchnorm(True) is True and use_sync_batchnorm(None) is resolve_sync_batchnorm(None)
    with pytest.warns(DeprecationWarning, match="weight_decay_groups"):
        assert len(param_groups(nn.Linear(2, 2), 0.1)) == 2


def test_cosine_tau_base_tau_keyword_warns_and_works():
    with pytest.warns(DeprecationWarning, match="moving_average_decay"):
        assert cosine_tau(5, 10, base_tau=0.9) == cosine_tau(5, 10, moving_average_decay=0.9)
    with pytest.raises(TypeError, match="both"):
        cosine_tau(5, 10, 0.9, base_tau=0.9)
    with pytest.raises(TypeError, match="unexpected"):
        cosine_tau(5, 10, tau=0.9)


def test_mlp_old_keywords_and_positional_order_warn_and_work():
    new = MLP(8, hidden_dim=16, output_dim=4)
    shapes = [tuple(p.shape) for p in new.parameters()]
    with pytest.warns(DeprecationWarning, match="output_dim"):
        old_keywords = MLP(dim=8, projection_size=4, hidden_size=16)
    with pytest.warns(DeprecationWarning, match="old order"):
        old_positional = MLP(8, 4, 16)  # MLP(dim, projection_size, hidden_size)
    for head in (old_keywords, old_positional):
        assert [tuple(p.shape) for p in head.parameters()] == shapes
    with pytest.raises(TypeError, match="unexpected"):
        MLP(8, width=3)


def test_extra_repr_names_the_decay_like_the_constructor():
    assert "moving_average_decay=0.996" in repr(tiny_learner())


# ---------------------------------------------------------------- errors
class WithUnusedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = SmallCNN(width=2)
        self.unused = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_hidden_layer_that_never_runs_has_its_own_exception():
    net = WithUnusedLayer()
    with pytest.raises(HiddenLayerNotRunError, match="'unused' never ran"):
        RepresentationExtractor("unused")(net, torch.rand(2, 3, 8, 8))
    with pytest.raises(HiddenLayerNotRunError):
        BYOL(net, image_size=8, hidden_layer="unused", projection_size=4, projection_hidden_size=8)


def test_probe_failure_message_is_shared():
    from byol_wrap import list_layers

    net = nn.Sequential(nn.Flatten(), nn.Linear(10, 4))
    with pytest.raises(ValueError, match=r"Sequential does not accept inputs of shape \(3, 8, 8\)") as in_list:
        list_layers(net, 8)
    with pytest.raises(ValueError, match=r"Sequential does not accept inputs of shape \(3, 8, 8\)") as in_byol:
        BYOL(net, 8, -1)
    assert str(in_byol.value).split(": ", 1)[1] == str(in_list.value).split(": ", 1)[1]


# ---------------------------------------------------------------- normalisation rule
def embedding(learner: BYOL, x: torch.Tensor) -> torch.Tensor:
    return learner.eval()(x, return_embedding=True, return_projection=False)


def test_normalize_auto_means_imagenet_with_default_augmentations_and_none_with_your_own():
    x = torch.rand(2, 3, 8, 8)
    imagenet = imagenet_normalize_by_hand(x)
    default = tiny_learner()
    torch.testing.assert_close(embedding(default, x), features(default.net, imagenet))
    own = tiny_learner(augment_fn=lambda v: v)
    torch.testing.assert_close(embedding(own, x), features(own.net, x))
    with pytest.raises(ValueError, match="'auto', None or a pair"):
        tiny_learner(normalize="imagenet")


def test_normalize_runs_after_the_default_augmentations():
    seen = []
    learner = tiny_learner(normalize=((0.5,), (0.25,)))
    learner.net.conv1.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    torch.manual_seed(1)
    learner(torch.rand(4, 3, 8, 8))
    torch.manual_seed(1)
    x = torch.rand(4, 3, 8, 8)
    view1 = learner.augment1(x)
    # view 1 comes first, alone (per view) or as the first half of the one-pass batch
    torch.testing.assert_close(seen[0][: len(view1)], (view1 - 0.5) / 0.25)


def test_names_moved_out_of_hooks_still_import_from_there_with_a_warning():
    from byol_wrap.core import layers, pooling, probe

    for name, module in (("pool", pooling), ("infer_input_shape", probe), ("list_layers", layers)):
        with pytest.warns(DeprecationWarning, match=f"moved to {module.__name__}"):
            assert getattr(__import__("byol_wrap.core.hooks", fromlist=[name]), name) is getattr(module, name)
