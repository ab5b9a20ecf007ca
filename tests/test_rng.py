"""get_rng_state / set_rng_state: every generator restored, and the dict survives torch.load(weights_only=True)."""
import io
import random

import numpy as np
import pytest
import torch

import byol_wrap
from byol_wrap import get_rng_state, set_rng_state


def draw():
    """One draw from each generator the state covers."""
    out = {"python": [random.random() for _ in range(3)] + [random.gauss(0, 1)],
           "numpy": np.random.rand(3).tolist() + [float(np.random.randn())],
           "torch": torch.rand(5)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [torch.rand(3, device=f"cuda:{i}").cpu() for i in range(torch.cuda.device_count())]
    return out


def assert_same_draws(a, b):
    assert a["python"] == b["python"], (a["python"], b["python"])
    assert a["numpy"] == b["numpy"], (a["numpy"], b["numpy"])
    assert torch.equal(a["torch"], b["torch"]), (a["torch"], b["torch"])
    for x, y in zip(a.get("cuda", []), b.get("cuda", [])):
        assert torch.equal(x, y), (x, y)


def test_save_draw_restore_draw_again_gives_equal_draws():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.randn()  # numpy caches one too (has_gauss)
    state = get_rng_state()
    first = draw()
    set_rng_state(state)
    assert_same_draws(first, draw())
    # and the generators really moved on without the restore
    third = draw()
    assert third["python"] != first["python"] and not torch.equal(third["torch"], first["torch"])


def test_round_trip_through_torch_save_and_weights_only_load():
    torch.manual_seed(3)
    state = get_rng_state()
    buffer = io.BytesIO()
    torch.save({"rng": state}, buffer)
    first = draw()
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["rng"]
    set_rng_state(loaded)
    assert_same_draws(first, draw())


def test_state_holds_only_safe_types():
    def check(value, where):
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                check(v, f"{where}[{i}]")
        elif isinstance(value, dict):
            for k, v in value.items():
                check(v, f"{where}.{k}")
        else:
            assert value is None or isinstance(value, (torch.Tensor, int, float, str)), (where, type(value))

    state = get_rng_state()
    assert {"python", "torch", "numpy"} <= set(state)
    check(state, "state")


def test_exported_at_top_level():
    assert byol_wrap.get_rng_state is get_rng_state and byol_wrap.set_rng_state is set_rng_state


@pytest.mark.parametrize("bad", [None, {"torch": torch.get_rng_state()}, [1, 2]])
def test_rejects_what_is_not_a_state(bad):
    with pytest.raises(TypeError, match="get_rng_state"):
        set_rng_state(bad)


def test_malformed_entry_is_a_value_error():
    state = get_rng_state()
    state["torch"] = torch.zeros(3)
    with pytest.raises(ValueError, match="malformed"):
        set_rng_state(state)


def test_missing_generators_are_left_alone():
    state = get_rng_state()
    del state["numpy"]
    np.random.seed(5)
    expected = np.random.rand()
    np.random.seed(5)
    set_rng_state(state)
    assert np.random.rand() == expected
