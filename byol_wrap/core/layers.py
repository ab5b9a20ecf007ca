"""The layer table: every candidate ``hidden_layer`` of a net with its output shape and
representation size, from one side-effect-free probe."""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .hooks import AmbiguousOutputError, first_tensor, net_output
from .pooling import Pooling
from .probe import PROBE_ERRORS, ImageSize, infer_input_shape, module_device_dtype, probe_context, probe_failure


def list_layers(
    net: nn.Module,
    image_size: ImageSize = None,
    input_shape: Optional[Sequence[int]] = None,
    token_pool: str = "auto",
) -> List[Dict[str, Any]]:
    """Candidate ``hidden_layer`` values with their output shapes and representation sizes.

    Runs one side-effect-free probe (eval mode, no grad, RNG and modes restored) and
    records every module that produced a tensor, in execution order. The entry with
    ``name=None`` is the net's own output (``hidden_layer=-1``).
    :func:`print_layers` shows the same as a table.

    Returns:
        A list of dicts with keys ``name``, ``type``, ``output_shape`` (without the batch
        dimension), ``representation_size``, ``pooling`` (how the output becomes one
        vector, in words), ``calls`` (how often the module ran in one forward; BYOL
        reads its first call) and ``child_index`` (the negative index into
        ``net.children()`` that selects it, for direct children but the last; else
        ``None``; the output row has -1).

    Example:
        >>> import torchvision
        >>> rows = list_layers(torchvision.models.resnet18(), 32)
        >>> [r for r in rows if r["name"] == "avgpool"][0]["representation_size"]
        512
    """
    pooling = Pooling.for_net(net, token_pool)
    device, dtype = module_device_dtype(net)
    shape = infer_input_shape(net, image_size, input_shape)
    x = torch.zeros((2, *shape), device=device, dtype=dtype)
    outputs: Dict[str, Tuple[str, Tensor]] = {}
    calls: Dict[str, int] = {}
    handles = []
    for name, module in net.named_modules():
        if not name:
            continue

        def hook(mod: nn.Module, _inp: Any, out: Any, name: str = name) -> None:
            calls[name] = calls.get(name, 0) + 1
            if name not in outputs:
                with contextlib.suppress(TypeError):  # not a tensor output: not a candidate
                    outputs[name] = (type(mod).__name__, first_tensor(out, name))

        handles.append(module.register_forward_hook(hook))
    try:
        with probe_context(net):
            final = net(x)
    except PROBE_ERRORS as error:
        raise probe_failure(net, shape, error) from error
    finally:
        for handle in handles:
            handle.remove()
    children = [name for name, _ in net.named_children()]
    rows = []
    for name, (kind, out) in outputs.items():
        # -1 means the net's output, so the last child has no index of its own
        index = children.index(name) - len(children) if name in children else None
        rows.append(_layer_row(name, kind, out, pooling, calls[name], index if index != -1 else None))
    # an output that is not a tensor, or a tuple of several (ambiguous for hidden_layer=-1), gets no row
    with contextlib.suppress(TypeError, AmbiguousOutputError):
        rows.append(_layer_row(None, type(net).__name__, net_output(final, net, None), pooling, 1, -1))
    return rows


def _layer_row(name: Optional[str], kind: str, out: Tensor, pooling: Pooling, calls: int,
               child_index: Optional[int]) -> Dict[str, Any]:
    try:
        size: Optional[int] = int(pooling(out).shape[-1])
    except ValueError:  # too few tokens for the prefix: not a usable representation
        size = None
    return {"name": name, "type": kind, "output_shape": tuple(out.shape[1:]), "representation_size": size,
            "pooling": pooling.describe(out.ndim), "calls": calls, "child_index": child_index}


def format_layers(rows: Sequence[Dict[str, Any]], max_depth: Optional[int] = None) -> str:
    """Render :func:`list_layers` rows as a plain-text table.

    ``max_depth`` keeps names with at most that many dotted parts (``1``: direct
    children only); the net's output row is always kept.

    Example:
        >>> import torchvision
        >>> print(format_layers(list_layers(torchvision.models.resnet18(), 32), max_depth=1))  # doctest: +ELLIPSIS
        hidden_layer ...
        avgpool [-2] ...
    """
    header = ("hidden_layer", "type", "output shape", "representation", "pooling")
    lines = []
    for row in rows:
        name = row["name"]
        if name is not None and max_depth is not None and name.count(".") + 1 > max_depth:
            continue
        label = "-1 (output)" if name is None else name
        if name is not None and row.get("child_index") is not None:
            label += f" [{row['child_index']}]"
        pooling = row["pooling"] + (f"; runs {row['calls']}x, first call used" if row.get("calls", 1) > 1 else "")
        size = "-" if row["representation_size"] is None else str(row["representation_size"])
        shape = "(" + ", ".join(str(s) for s in row["output_shape"]) + ")"
        lines.append((label, row["type"], shape, size, pooling))
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths)) + "  " + line[-1]
        for line in [header, *lines]
    )


def print_layers(
    net: nn.Module,
    image_size: ImageSize = None,
    input_shape: Optional[Sequence[int]] = None,
    token_pool: str = "auto",
    max_depth: Optional[int] = None,
) -> None:
    """Print the candidate hidden layers of ``net`` as a table (see :func:`list_layers`).

    The first column is what to pass as ``hidden_layer``; ``[-2]`` marks the child index
    that selects the same module.

    Example:
        >>> import torchvision
        >>> print_layers(torchvision.models.resnet18(), 32, max_depth=1)  # doctest: +ELLIPSIS
        hidden_layer ...
    """
    print(format_layers(list_layers(net, image_size, input_shape, token_pool), max_depth))
