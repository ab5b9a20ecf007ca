"""Reach the BYOL learner behind the wrappers of the training stack.

DistributedDataParallel, ``torch.compile``, accelerate and Lightning all put the learner
inside another module, where ``update_moving_average`` and the target network are no
longer attributes of the object the training loop holds. :func:`unwrap` finds the learner
again; :func:`ddp_params_to_ignore` lists, for a module that *contains* learners (a
``LightningModule``), the backbone parameters that DistributedDataParallel must not wait
for.
"""
from __future__ import annotations

from typing import List

from torch import nn

from .byol import BYOL

# Attributes under which wrappers keep the wrapped module: DistributedDataParallel,
# DataParallel, FSDP and DeepSpeed use ``module``; ``torch.compile`` uses ``_orig_mod``.
_WRAPPED_ATTRIBUTES = ("_orig_mod", "module")


def unwrap(model: nn.Module) -> BYOL:
    """The :class:`BYOL` learner inside ``model``.

    Peels DistributedDataParallel, DataParallel, ``torch.compile`` and accelerate wrappers
    (in any nesting); if what remains is not a learner, the one learner among its
    submodules (e.g. ``self.learner`` of a ``LightningModule``) is returned.

    Raises:
        TypeError: if ``model`` is not a module or contains no learner.
        ValueError: if it contains more than one learner.

    Example:
        >>> ddp = torch.nn.parallel.DistributedDataParallel(learner)  # doctest: +SKIP
        >>> unwrap(ddp).update_moving_average()                       # doctest: +SKIP
        >>> unwrap(torch.compile(learner)) is learner                 # doctest: +SKIP
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module wrapping a BYOL learner, got {type(model).__name__}")
    current = model
    while not isinstance(current, BYOL):
        inner = next(
            (getattr(current, a) for a in _WRAPPED_ATTRIBUTES if isinstance(getattr(current, a, None), nn.Module)),
            None,
        )
        if inner is None:
            break
        current = inner
    if isinstance(current, BYOL):
        return current
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, BYOL)]
    if not found:
        raise TypeError(
            f"{type(model).__name__} contains no byol_wrap.BYOL learner; pass the learner or a wrapper of it "
            f"(DistributedDataParallel, torch.compile, accelerate, a LightningModule holding one)"
        )
    if len(found) > 1:
        names = ", ".join(name for name, _ in found)
        raise ValueError(
            f"{type(model).__name__} contains {len(found)} BYOL learners ({names}); unwrap the one you mean"
        )
    return found[0][1]


def ddp_params_to_ignore(root: nn.Module) -> List[str]:
    """Names (relative to ``root``) of the backbone parameters every learner in ``root`` leaves unused.

    A learner lists the parameters of its net that have no gradient path to the
    representation (e.g. the classifier after ``hidden_layer``) in
    ``learner._ddp_params_and_buffers_to_ignore``, which DistributedDataParallel reads when
    it wraps the learner itself. When DDP wraps a module that *holds* the learner (Lightning
    wraps the ``LightningModule``), set the same attribute on that module, prefixed:

    Example:
        >>> class Lit(lightning.LightningModule):                       # doctest: +SKIP
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.learner = BYOL(resnet18(), image_size=32, hidden_layer="avgpool")
        ...         self._ddp_params_and_buffers_to_ignore = ddp_params_to_ignore(self)
        >>> ddp_params_to_ignore(Lit())                                   # doctest: +SKIP
        ['learner.net.fc.weight', 'learner.net.fc.bias']
    """
    if not isinstance(root, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(root).__name__}")
    names: List[str] = []
    for prefix, module in root.named_modules():
        if isinstance(module, BYOL):
            names += [f"{prefix}.{name}" if prefix else name for name in module._ddp_params_and_buffers_to_ignore]
    return names
