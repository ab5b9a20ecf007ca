"""Mixed precision (torch.autocast), torch.compile and channels_last against eager float32."""
import copy
import shutil

import pytest
import torch
from torch import nn

from byol_wrap import BYOL, unwrap

from helpers import assert_tensors_close, train_steps

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )


def learner_pair(device="cpu", hidden_layer="6", net=None):
    """Two identical learners with deterministic views (identity and horizontal flip)."""
    torch.manual_seed(0)
    learner = BYOL((net or tiny_net()).to(device), image_size=16, hidden_layer=hidden_layer, projection_size=16,
                   projection_hidden_size=32, augment_fn=lambda x: x, augment_fn2=lambda x: x.flip(-1),
                   normalize=None)
    return learner, copy.deepcopy(learner)


def loss_and_grads(model, learner, x):
    loss = model(x)
    loss.backward()
    return loss, {n: p.grad.detach().clone() for n, p in learner.named_parameters() if p.grad is not None}


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


DEVICES_DTYPES = [("cpu", torch.bfloat16)] + [
    pytest.param(device, dtype, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))
    for device, dtype in [("cuda", torch.float16), ("cuda", torch.bfloat16)]
]


@pytest.mark.parametrize("device,dtype", DEVICES_DTYPES)
def test_autocast_loss_is_float32_and_close_to_fp32(device, dtype):
    eager, mixed = learner_pair(device)
    x = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0)).to(device)
    ref_loss, ref_grads = loss_and_grads(eager, eager, x)
    with torch.autocast(device, dtype=dtype):
        loss, grads = loss_and_grads(mixed, mixed, x)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref_loss.item(), abs=0.03)  # the loss lies in [0, 8]
    for name in ref_grads:
        assert grads[name].dtype == torch.float32 and torch.isfinite(grads[name]).all()
    # half-precision gradients of an untrained net are noisy (bf16 keeps 8 significant bits):
    # compare directions, per weight tensor and for all gradients together
    weights = [name for name, grad in ref_grads.items() if grad.ndim > 1]
    assert min(cosine(grads[name], ref_grads[name]) for name in weights) > 0.9
    flat = lambda g: torch.cat([g[name].flatten() for name in ref_grads])  # noqa: E731
    assert cosine(flat(grads), flat(ref_grads)) > 0.95
    # the paper's augmentations under autocast as well
    torch.manual_seed(0)
    default = BYOL(tiny_net().to(device), image_size=16, hidden_layer="6", projection_size=16,
                   projection_hidden_size=32)
    with torch.autocast(device, dtype=dtype):
        loss = default(torch.rand(8, 3, 20, 20, device=device))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_channels_last_matches_contiguous():
    eager, cl = learner_pair()
    cl = cl.to(memory_format=torch.channels_last)
    x = torch.rand(8, 3, 16, 16)
    ref_loss, ref_grads = loss_and_grads(eager, eager, x)
    loss, grads = loss_and_grads(cl, cl, x.contiguous(memory_format=torch.channels_last))
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    # net.0.bias feeds a BatchNorm: its gradient is zero in exact arithmetic, float noise here
    assert_tensors_close(grads, ref_grads, rtol=1e-4, scale_rtol=1e-5)


def sgd_steps(model, learner, batches, lr=0.1):
    return train_steps(model, torch.optim.SGD(learner.parameters(), lr=lr), batches)


def test_compile_of_the_learner_matches_eager():
    """Dynamo captures the learner (temporary hooks, early exit) and AOTAutograd its backward;
    backend="aot_eager" leaves out only inductor's code generation (tested below)."""
    eager, compiled_learner = learner_pair()
    compiled = torch.compile(compiled_learner, backend="aot_eager")
    assert unwrap(compiled) is compiled_learner
    generator = torch.Generator().manual_seed(1)
    batches = [torch.rand(8, 3, 16, 16, generator=generator) for _ in range(3)]
    ref = sgd_steps(eager, eager, batches)
    got = sgd_steps(compiled, compiled_learner, batches)
    for a, b in zip(got, ref):
        assert a.dtype == torch.float32 and torch.isfinite(a)
        assert a.item() == pytest.approx(b.item(), rel=1e-5)
    got_state, ref_state = compiled_learner.state_dict(), eager.state_dict()
    assert_tensors_close({k: v for k, v in got_state.items() if isinstance(v, torch.Tensor)},
                         {k: v for k, v in ref_state.items() if isinstance(v, torch.Tensor)},
                         rtol=1e-4, scale_rtol=1e-5)
    assert compiled_learner.ema_step == 3


def _have_cpp_compiler() -> bool:
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return shutil.which(get_cpp_compiler()) is not None
    except Exception:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _have_cpp_compiler(), reason="torch.compile's inductor backend needs a C++ compiler on CPU")
def test_inductor_compile_matches_eager():
    # the smallest learner (no hook: hidden_layer=-1) keeps inductor's C++ compilation short
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    eager, compiled_learner = learner_pair(net=net, hidden_layer=-1)
    compiled = torch.compile(compiled_learner)
    x = torch.rand(8, 3, 16, 16)
    ref_loss, ref_grads = loss_and_grads(eager, eager, x)
    loss, grads = loss_and_grads(compiled, compiled_learner, x)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-4)
    # inductor reorders float sums: differences of ~1e-4 of the largest gradient
    assert_tensors_close(grads, ref_grads, rtol=1e-3, scale_rtol=2e-4)
