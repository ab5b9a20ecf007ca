"""``BYOL``: the learner that ties augment -> encode (hook) -> project/predict -> loss -> EMA."""
from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ChannelNormalize,
    Normalization,
    check_normalization,
    default_augmentations,
    to_float_images,
)
from .batchnorm import ViewBatching, per_view_batchnorm, resolve_view_batching, unsplittable_layers
from .checks import (
    ImageRangeWarning,
    NonFiniteError,
    check_input_batch,
    check_loss,
    check_online_weights,
    range_message,
    restore_batchnorm_on_error,
)
from .ema import PAPER_MOVING_AVERAGE_DECAY, UpdateCalls, cosine_tau, ema_update_
from .heads import MLP, resolve_sync_batchnorm
from .hooks import AmbiguousOutputError, HiddenLayerNotRunError, LayerSpec, RepresentationExtractor, resolve_layer
from .loss import symmetric_byol_loss
from .memory_format import MemoryFormat, channels_last_problem, check_memory_format, has_conv2d, wants_channels_last
from .pooling import Pooling
from .probe import (
    PROBE_ERRORS,
    ImageSize,
    cuda_rng_devices,
    infer_input_shape,
    module_device_dtype,
    probe_context,
    probe_failure,
)

Augment = Callable[[Tensor], Tensor]
#: ``normalize`` as given to ``BYOL``: statistics, ``None``, or ``"auto"``.
NormalizeOption = Union[Normalization, str]


def default_augmentations_error(input_shape: Sequence[int]) -> str:
    """The message for inputs that are not ``(channels, height, width)`` images, which the default
    augmentations cannot handle (images with any number of channels they can)."""
    shape = tuple(input_shape)
    return (f"inputs of shape {shape} are not (channels, height, width) images, so the default image "
            f"augmentations cannot apply. Pass augment_fn (and optionally augment_fn2 for the second view): "
            f"callables that take a batch (N, {', '.join(map(str, shape))}) and return a randomly augmented batch, "
            f"e.g. random crops, scaling, jitter or added noise for 1-D signals.")


def resolve_normalize(normalize: NormalizeOption, default_augmentations: bool, channels: int) -> Normalization:
    """The statistics ``BYOL`` normalises with, or ``None``.

    ``"auto"`` means ImageNet statistics with the default augmentations of 3-channel (RGB)
    images, and none otherwise: with your own ``augment_fn``, and for any other channel count
    (ImageNet's statistics describe RGB photographs; pass your data's per-channel
    ``(mean, std)`` instead). Explicit statistics must have 1 or ``channels`` values each.

    Example:
        >>> resolve_normalize("auto", default_augmentations=False, channels=4) is None
        True
        >>> resolve_normalize("auto", default_augmentations=True, channels=1) is None
        True
    """
    if isinstance(normalize, str):
        if normalize != "auto":
            raise ValueError(f"normalize must be 'auto', None or a pair (mean, std), got {normalize!r}")
        return (IMAGENET_MEAN, IMAGENET_STD) if default_augmentations and channels == 3 else None
    check_normalization(normalize, channels)
    return normalize


def check_arguments(
    net: nn.Module,
    moving_average_decay: float,
    total_steps: Optional[int],
    augment_fn: Optional[Augment],
    augment_fn2: Optional[Augment],
) -> None:
    """The argument checks of :class:`BYOL` that need no probe."""
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if not 0.0 <= moving_average_decay <= 1.0:
        raise ValueError(f"moving_average_decay must lie in [0, 1], got {moving_average_decay}")
    if isinstance(total_steps, bool):
        raise ValueError(
            f"total_steps={total_steps} is a bool, not a number of steps; byol-pytorch's 9th positional argument "
            f"is use_momentum, byol-wrap's is total_steps: pass use_momentum= (and total_steps=) by keyword"
        )
    if total_steps is not None and (not isinstance(total_steps, int) or total_steps <= 0):
        raise ValueError(f"total_steps must be a positive int or None, got {total_steps!r}")
    for name, fn in (("augment_fn", augment_fn), ("augment_fn2", augment_fn2)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable on a batch of images, got {type(fn).__name__}")


def check_simplicial_embeddings(use_simplicial_embeddings: bool) -> None:
    """byol-pytorch's ``use_simplicial_embeddings`` has no counterpart here: ``False`` is what
    BYOL does anyway; ``True`` is refused with what to do instead."""
    if use_simplicial_embeddings:
        raise ValueError(
            "use_simplicial_embeddings=True (byol-pytorch's simplicial embedding projector) has no counterpart in "
            "byol-wrap, whose projector is the paper's MLP; pass use_simplicial_embeddings=False or leave it out. "
            "The sem_* keywords only apply with it and are ignored otherwise."
        )


def exclude_from_state_dict(module: object) -> None:
    """Make every buffer of ``module`` (if it is an ``nn.Module``) non-persistent: augmentation
    state (kornia's parameter generators) is how a run augmented, not what it learned."""
    if not isinstance(module, nn.Module):
        return
    for sub in module.modules():
        for name, buffer in list(sub.named_buffers(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, buffer, persistent=False)


class BYOL(nn.Module):
    """Bootstrap Your Own Latent (Grill et al., 2020) around any backbone.

    The online network is ``net`` (the user's module, trained in place) followed by a
    projector and a predictor; the target network is a copy of ``net`` and the projector
    that receives no gradient and follows the online weights by an exponential moving
    average (:meth:`update_moving_average`).

    Args:
        net: the backbone. Its representation is read at ``hidden_layer``.
        image_size: side of the augmented views, an int or ``(H, W)``; also the size of
            the construction-time probe.
        hidden_layer: a dotted module name (``"avgpool"``, ``"layer4.1"``), an index into
            ``net.children()`` (``-2``: the second-to-last child), or ``-1``/``None`` for
            the net's own output. 4-D outputs are global-average-pooled, 3-D tokens pooled
            by ``token_pool``.
        projection_size: output size of projector and predictor (256 in the paper).
        projection_hidden_size: hidden size of both MLPs (4096 in the paper).
        augment_fn: replaces T, the first view's augmentation (any callable on a batch).
            Given alone, it is used for both views. Default: the paper's T for 3 channels, else
            ``byol_augmentation(image_size, 1, channels=C)`` (docs/domain-imagery.md).
        augment_fn2: replaces T', the second view's augmentation.
        moving_average_decay: the EMA decay, the paper's ``tau_base`` (0.996).
        total_steps: number of :meth:`update_moving_average` calls in the run; when given, tau follows
            the paper's cosine schedule from ``moving_average_decay`` to 1, then stays exactly 1.0.
        use_momentum: ``False`` gives the SimSiam variant (target = online under
            stop-gradient, no EMA).
        sync_batchnorm: ``nn.SyncBatchNorm`` in projector and predictor; ``None``: when
            torch.distributed is initialised with more than one rank and ``net`` is not on
            the CPU (torch has no SyncBatchNorm for CPU).
        normalize: ``(mean, std)`` (one value per input channel, or one for all),
            ``None``, or ``"auto"``. It runs after whichever augmentation runs and on
            embedding inputs; ``"auto"`` (the default) means ImageNet statistics with the
            default augmentations of 3-channel images, and none with your own ``augment_fn``
            or with other channel counts (pass your data's per-channel statistics there).
        token_pool: pooling of 3-D outputs: ``"cls"``, ``"mean"`` (over tokens),
            ``"spatial"`` (``(N, C, L)`` maps) or ``"auto"`` (class token if the net has one).
        pool_fn: a callable replacing the default pooling of the hidden layer's output.
        early_exit: stop the forward once ``hidden_layer`` has run (the layers after it
            are not computed; results are identical).
        view_batching: how the two views go through the networks. ``"one_pass"``: as one
            batch, each BatchNorm layer normalising each view with its own statistics (the
            paper's per-view passes, same loss, gradients and running statistics, computed in
            one pass, thread-safe; see :func:`byol_wrap.core.batchnorm.per_view_batchnorm`; a
            ``SyncBatchNorm`` syncing across processes gets a forward per view). ``"per_view"``: one
            forward per view. ``"concat"``: one batch whose BatchNorm statistics mix the views
            (byol-pytorch's behaviour). ``"auto"`` (default): the faster of the first two
            as measured on a CPU, ``"one_pass"`` up to 48 x 48 pixels per view, else
            ``"per_view"``.
        concat_views: deprecated; ``True`` is ``view_batching="concat"``.
        input_shape: per-sample input shape for the probe when ``image_size`` does not
            describe it, e.g. ``(channels, length)`` for a 1-D signal encoder.
        check_finite: raise :class:`~byol_wrap.core.checks.NonFiniteError` for a NaN/inf in the
            input batch (before any forward), in the loss (BatchNorm running statistics put
            back) or in the online weights at :meth:`update_moving_average` (target kept),
            and warn once when float images lie far outside [0, 1] with the default
            augmentations. Each check costs a host sync; ``False`` turns them all off.
        memory_format: the layout of the views the net receives. ``"auto"`` (default):
            channels-last (NHWC) on the CPU for nets with an ``nn.Conv2d`` whose
            representation does not depend on the layout, which makes every activation
            channels-last and the step faster (BENCHMARKS.md); otherwise as they are. The
            check runs once, at construction, in eval mode, and only when the net is on the
            CPU then (a net built on a GPU keeps its layout if moved to the CPU later).
            ``"channels_last"``: on every device (PyTorch's advice for convnets on GPUs with
            autocast; not measured here); a ValueError if the net's output depends on the
            layout. ``"preserve"``: the views as the augmentation returns them. The net's
            weights are never converted; results agree to float rounding.
        use_simplicial_embeddings, sem_num_simplices, sem_simplex_dim, sem_temperature:
            byol-pytorch's keywords, accepted for migration; ``True`` raises (no counterpart).

    Example:
        >>> import torchvision
        >>> learner = BYOL(torchvision.models.resnet18(), image_size=32, hidden_layer="avgpool")
        >>> loss = learner(torch.rand(4, 3, 32, 32))
        >>> loss.backward()
        >>> tau = learner.update_moving_average()
    """

    def __init__(
        self,
        net: nn.Module,
        image_size: ImageSize = None,
        hidden_layer: LayerSpec = -2,
        projection_size: int = 256,
        projection_hidden_size: int = 4096,
        augment_fn: Optional[Augment] = None,
        augment_fn2: Optional[Augment] = None,
        moving_average_decay: float = PAPER_MOVING_AVERAGE_DECAY,
        total_steps: Optional[int] = None,
        use_momentum: bool = True,
        sync_batchnorm: Optional[bool] = None,
        *,
        normalize: NormalizeOption = "auto",
        token_pool: str = "auto",
        pool_fn: Optional[Callable[[Tensor], Tensor]] = None,
        early_exit: bool = True,
        view_batching: ViewBatching = "auto",
        concat_views: Optional[bool] = None,
        input_shape: Optional[Sequence[int]] = None,
        check_finite: bool = True,
        memory_format: MemoryFormat = "auto",
        use_simplicial_embeddings: bool = False,
        sem_num_simplices: int = 32,
        sem_simplex_dim: int = 8,
        sem_temperature: float = 0.1,
    ) -> None:
        super().__init__()
        check_arguments(net, moving_average_decay, total_steps, augment_fn, augment_fn2)
        check_simplicial_embeddings(use_simplicial_embeddings)
        check_memory_format(memory_format)
        self.memory_format = memory_format
        self.check_finite = bool(check_finite)
        self._range_warned = False
        self.net = net
        self.input_shape = infer_input_shape(net, image_size, input_shape)
        self.extractor = RepresentationExtractor(
            resolve_layer(net, hidden_layer), token_pool, pool_fn, early_exit, pooling=Pooling.for_net(net, token_pool)
        )
        self.moving_average_decay = float(moving_average_decay)
        self.total_steps = total_steps
        self.use_momentum = use_momentum
        self.view_batching = resolve_view_batching(view_batching, concat_views, net, self.extractor.layer,
                                                   self.input_shape)
        self.ema_step = 0
        self._ema_calls = UpdateCalls()
        self._set_augmentations(augment_fn, augment_fn2, normalize)
        device, dtype = module_device_dtype(net)
        self.representation_size, unused = self._probe(device, dtype, image_size)
        self._channels_last = self._channels_last_suits(device, dtype)
        # Unused backbone parameters (e.g. the classifier after the hidden layer) get no
        # gradient; DistributedDataParallel would fail on them without this list.
        self._ddp_params_and_buffers_to_ignore = [f"net.{name}" for name in unused]
        self._build_heads(projection_size, projection_hidden_size, sync_batchnorm, device, dtype)
        self._build_target()

    # ------------------------------------------------------------------ construction
    def _set_augmentations(self, augment_fn: Optional[Augment], augment_fn2: Optional[Augment],
                           normalize: NormalizeOption) -> None:
        """T and T' (the paper's unless given) and the normalisation that follows whichever runs."""
        self.uses_default_augmentations = augment_fn is None and augment_fn2 is None
        if self.uses_default_augmentations:
            if len(self.input_shape) != 3:
                raise ValueError(default_augmentations_error(self.input_shape))
            augment_fn, augment_fn2 = default_augmentations(self.input_shape[1:], channels=self.input_shape[0])
        self.augment1: Augment = augment_fn  # type: ignore[assignment]
        self.augment2: Augment = augment_fn2 if augment_fn2 is not None else augment_fn  # type: ignore[assignment]
        stats = resolve_normalize(normalize, self.uses_default_augmentations, self.input_shape[0])
        self.normalizer: Optional[ChannelNormalize] = ChannelNormalize(*stats) if stats is not None else None
        exclude_from_state_dict(self.augment1)
        exclude_from_state_dict(self.augment2)

    def _probe(self, device: torch.device, dtype: torch.dtype, image_size: ImageSize) -> Tuple[int, List[str]]:
        """Representation size and the names of net parameters it does not depend on."""
        x = torch.zeros((2, *self.input_shape), device=device, dtype=dtype)
        trainable = [(n, p) for n, p in self.net.named_parameters() if p.requires_grad]
        try:
            with probe_context(self.net, grad=bool(trainable)):
                representation = self.extractor(self.net, x)
                grads = (
                    torch.autograd.grad(representation.float().sum(), [p for _, p in trainable], allow_unused=True)
                    if trainable and representation.requires_grad
                    else [None] * len(trainable)
                )
        except (HiddenLayerNotRunError, AmbiguousOutputError):
            raise
        except PROBE_ERRORS as error:
            raise probe_failure(self.net, self.input_shape, error, image_size) from error
        if representation.ndim != 2:
            raise ValueError(
                f"the representation must be one vector per sample, got shape {tuple(representation.shape)}; "
                f"pass pool_fn to reduce it"
            )
        unused = [name for (name, _), g in zip(trainable, grads) if g is None]
        return int(representation.shape[1]), unused

    def _channels_last_suits(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether the views may go to the net as channels-last (``memory_format``)."""
        if self.memory_format == "preserve":
            return False
        if self.memory_format == "auto" and (device.type != "cpu" or not has_conv2d(self.net)):
            return False
        problem = channels_last_problem(self.net, lambda x: self.extractor(self.net, x), self.input_shape, device,
                                        dtype)
        if problem is not None and self.memory_format == "channels_last":
            raise ValueError(f"memory_format='channels_last' does not suit this net: {problem}. Use "
                             f"memory_format='preserve' (or 'auto', which checks this and falls back).")
        return problem is None

    def _build_heads(self, projection_size: int, projection_hidden_size: int, sync_batchnorm: Optional[bool],
                     device: torch.device, dtype: torch.dtype) -> None:
        """Projector and predictor, on the net's device and dtype, without touching the global RNG."""
        sync = resolve_sync_batchnorm(sync_batchnorm, device)  # None: not on CPU, which has no SyncBatchNorm
        with torch.random.fork_rng(devices=cuda_rng_devices(device)):
            self.projector = MLP(self.representation_size, hidden_dim=projection_hidden_size,
                                 output_dim=projection_size, sync_batchnorm=sync)
            self.predictor = MLP(projection_size, hidden_dim=projection_hidden_size,
                                 output_dim=projection_size, sync_batchnorm=sync)
        self.projector.to(device=device, dtype=dtype)
        self.predictor.to(device=device, dtype=dtype)

    def _build_target(self) -> None:
        """The target network: a frozen copy of net and projector (none with ``use_momentum=False``)."""
        self.target_net: Optional[nn.Module] = None
        self.target_projector: Optional[nn.Module] = None
        if not self.use_momentum:
            return
        try:
            self.target_net = copy.deepcopy(self.net)
        except Exception as error:  # pragma: no cover - depends on the user's module
            raise RuntimeError(
                f"could not copy {type(self.net).__name__} for the target network ({error}); "
                f"make the module deep-copyable or use use_momentum=False"
            ) from error
        self.target_projector = copy.deepcopy(self.projector)
        self.target_net.requires_grad_(False)
        self.target_projector.requires_grad_(False)

    # ------------------------------------------------------------------ networks
    def _online(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """(projection, representation) of the online network."""
        try:
            representation = self.extractor(self.net, x)
        except (HiddenLayerNotRunError, AmbiguousOutputError, NonFiniteError):
            raise
        except PROBE_ERRORS as error:
            if tuple(x.shape[1:]) != self.input_shape:
                raise ValueError(self._size_message(x, f"{type(self.net).__name__} fails on them ({error})")) from error
            if wants_channels_last(self.memory_format, self._channels_last, x):
                raise RuntimeError(
                    f"{type(self.net).__name__} failed on the channels-last views that memory_format="
                    f"{self.memory_format!r} gives it ({type(error).__name__}: {error}). If it works on ordinary "
                    f"(NCHW) input, its forward depends on the memory layout in training mode, which the check at "
                    f"construction (eval mode) cannot see: pass BYOL(..., memory_format='preserve')."
                ) from error
            raise
        if representation.ndim != 2 or representation.shape[1] != self.representation_size:
            raise ValueError(self._size_message(
                x, f"the hidden layer gives a representation of shape {tuple(representation.shape[1:])} instead of "
                   f"({self.representation_size},), the projector's input size"))
        return self.projector(representation), representation

    def _size_message(self, x: Tensor, what: str) -> str:
        return (f"inputs of shape {tuple(x.shape[1:])} reach the network, which was built and probed for "
                f"{self.input_shape}, and {what}. Resize the images to {self.input_shape[1:]} (image_size), or "
                f"choose a hidden layer whose output size does not depend on the input size (global pooling).")

    @torch.no_grad()
    def _target(self, x: Tensor) -> Tensor:
        net = self.target_net if self.target_net is not None else self.net
        projector = self.target_projector if self.target_projector is not None else self.projector
        projection: Tensor = projector(self.extractor(net, x))
        return projection.detach()

    def _check_input(self, x: Tensor, augmented: bool) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a tensor of images, got {type(x).__name__}")
        if x.ndim == 0:
            raise ValueError(f"expected a batch of shape (N, {', '.join(map(str, self.input_shape))}), got a 0-d "
                             f"tensor (a single number); pass a batch of images, samples along the first dimension")
        floats = x.is_floating_point()  # uint8 images are finite and in range by construction
        x = to_float_images(x)
        if augmented and x.shape[0] == 0:
            raise ValueError(f"empty batch {tuple(x.shape)}: the loss of no samples is undefined; skip empty batches "
                             f"(e.g. DataLoader(..., drop_last=True))")
        if self.training and x.shape[0] < 2:
            raise ValueError(
                f"a batch of {x.shape[0]} cannot be used in training mode: the BatchNorm layers in the "
                f"projector and predictor need at least 2 samples (call learner.eval() for single embeddings)"
            )
        if not augmented or self.uses_default_augmentations:
            expected = self.input_shape
            if x.ndim == len(expected) + 1 and x.shape[1] != expected[0]:
                raise ValueError(
                    f"the net takes {expected[0]}-channel inputs (N, {', '.join(map(str, expected))}) but the batch "
                    f"has {x.shape[1]} channels, shape {tuple(x.shape)}; pass {expected[0]}-channel images (the "
                    f"default augmentations are built for the net's first convolution, or input_shape)"
                )
            if x.ndim != len(expected) + 1:
                raise ValueError(
                    f"expected input of shape (N, {', '.join(map(str, expected))}) "
                    f"(N, C{', H, W' if len(expected) == 3 else ', ...'}"
                    f" with C={expected[0]}), got {tuple(x.shape)}"
                )
        device, _ = module_device_dtype(self.net)
        if x.device != device:
            raise ValueError(f"images are on {x.device} but the learner is on {device}; move one to the other")
        self._check_modules_agree()
        if self.check_finite and floats and x.numel():
            self._check_values(x)
        return x

    def _check_modules_agree(self) -> None:
        """Net, heads and target on one device and dtype (a net converted alone after
        construction would end in a raw matmul error)."""
        where = module_device_dtype(self.net)
        for name in ("projector", "target_net"):
            module = getattr(self, name)
            if module is not None and module_device_dtype(module) != where:
                other = module_device_dtype(module)
                raise ValueError(
                    f"the net's parameters are {where[1]} on {where[0]} but the {name}'s are {other[1]} on {other[0]}: "
                    f"the net was converted after BYOL was built. Convert the learner instead, learner.to(device, "
                    f"dtype), which converts net, heads and target together."
                )

    def _check_values(self, x: Tensor) -> None:
        """NaN/inf raise; float images far outside [0, 1] warn once (default augmentations: for RGB
        always, for other channel counts, which work at any scale, when nothing normalises them)."""
        lo, hi = check_input_batch(x)
        if self.uses_default_augmentations and not self._range_warned:
            message = range_message(lo, hi, self.input_shape[0], normalized=self.normalizer is not None)
            if message is not None:
                self._range_warned = True
                warnings.warn(message, ImageRangeWarning, stacklevel=4)

    def _check_views(self, *views: Tensor) -> None:
        """Custom augmentations must give what the net takes (dimensions and channels)."""
        expected = self.input_shape
        for view in views:
            if view.ndim != len(expected) + 1 or (len(expected) > 1 and view.shape[1] != expected[0]):
                raise ValueError(f"the augmentation returned views of shape {tuple(view.shape)}, but the net takes "
                                 f"(N, {', '.join(map(str, expected))}) (channels {expected[0]}); check augment_fn "
                                 f"and the input batch {tuple(views[0].shape)}")

    def _normalize(self, x: Tensor) -> Tensor:
        return self.normalizer(x) if self.normalizer is not None else x

    def _to_net_input(self, x: Tensor) -> Tensor:
        """``x`` in the net's dtype, and channels-last when ``memory_format`` asks for it."""
        _, dtype = module_device_dtype(self.net)
        if wants_channels_last(self.memory_format, self._channels_last, x):
            return x.to(dtype=dtype, memory_format=torch.channels_last)
        return x if x.dtype == dtype else x.to(dtype)

    # ------------------------------------------------------------------ public API
    def forward(
        self, x: Tensor, return_embedding: bool = False, return_projection: bool = True
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """The symmetric BYOL loss of a batch, or its online embedding.

        Args:
            x: images ``(N, C, H, W)``, uint8 in [0, 255] or float: in [0, 1] for 3-channel
                images with the default augmentations, at any scale for other channel counts.
            return_embedding: return ``(projection, representation)`` of the online
                network for ``x`` without augmentation (normalised like the default views).
            return_projection: with ``return_embedding``, ``False`` returns the
                representation alone.
        """
        x = self._check_input(x, augmented=not return_embedding)
        if return_embedding:
            projection, representation = self._online(self._to_net_input(self._normalize(x)))
            return (projection, representation) if return_projection else representation
        self._ema_calls.forward()
        if not self.check_finite:
            return self._loss(x)
        with restore_batchnorm_on_error(self):
            loss = self._loss(x)
            check_loss(loss, self.named_parameters())
        return loss

    def _loss(self, x: Tensor) -> Tensor:
        """Augment, encode both views online and with the target, the symmetric loss."""
        view1, view2 = self.augment1(x), self.augment2(x)
        if not self.uses_default_augmentations:
            self._check_views(view1, view2)
        view1 = self._to_net_input(self._normalize(view1))
        view2 = self._to_net_input(self._normalize(view2))
        if self.view_batching != "per_view" and view1.shape == view2.shape and not self._needs_separate_passes():
            return self._loss_concatenated(view1, view2)
        projection1, _ = self._online(view1)
        projection2, _ = self._online(view2)
        if self.use_momentum:
            z1, z2 = self._target(view1), self._target(view2)
        else:  # SimSiam: the target is the online projection under stop-gradient
            z1, z2 = projection1.detach(), projection2.detach()
        return symmetric_byol_loss(self.predictor(projection1), self.predictor(projection2), z1, z2)

    def _networks(self) -> List[nn.Module]:
        networks = (self.net, self.projector, self.predictor, self.target_net, self.target_projector)
        return [m for m in networks if m is not None]

    def _needs_separate_passes(self) -> bool:
        """A SyncBatchNorm synchronising across processes cannot be split: one forward per view instead."""
        return self.view_batching == "one_pass" and bool(unsplittable_layers(*self._networks()))

    def _loss_concatenated(self, view1: Tensor, view2: Tensor) -> Tensor:
        """The loss with both views in one batch; BatchNorm statistics per view with ``"one_pass"``."""
        views = torch.cat((view1, view2))
        num_views = 2 if self.view_batching == "one_pass" else 1  # 1: statistics over both views ("concat")
        with per_view_batchnorm(*self._networks(), num_views=num_views):
            projection, _ = self._online(views)
            q1, q2 = self.predictor(projection).chunk(2)
            z = self._target(views) if self.use_momentum else projection.detach()
        z1, z2 = z.chunk(2)
        return symmetric_byol_loss(q1, q2, z1, z2)

    @property
    def concat_views(self) -> bool:
        """Whether the views share BatchNorm statistics (``view_batching == "concat"``); kept for old code."""
        return self.view_batching == "concat"

    @property
    def tau(self) -> float:
        """The decay the next :meth:`update_moving_average` call will use."""
        if self.total_steps is None:
            return self.moving_average_decay
        return cosine_tau(self.ema_step, self.total_steps, self.moving_average_decay)

    def online_parameters(self) -> List[nn.Parameter]:
        """Online encoder and projector parameters, in the order the target mirrors them."""
        return list(self.net.parameters()) + list(self.projector.parameters())

    def target_parameters(self) -> List[nn.Parameter]:
        """Target encoder and projector parameters (no gradient, EMA of the online ones)."""
        if self.target_net is None or self.target_projector is None:
            return []
        return list(self.target_net.parameters()) + list(self.target_projector.parameters())

    def update_moving_average(self) -> float:
        """Move the target towards the online network: ``xi <- tau xi + (1 - tau) theta``.

        Call once per optimizer step (an extra call warns once, :class:`~byol_wrap.core.ema.UpdateCalls`).
        Returns the tau that was used; past ``total_steps`` it is 1.0 (the target stops).

        Raises:
            RuntimeError: with ``use_momentum=False`` (there is no separate target).
            NonFiniteError: when an online weight is NaN/inf (unless ``check_finite=False``);
                the target is then left as it was.
        """
        if not self.use_momentum:
            raise RuntimeError(
                "update_moving_average() has nothing to do with use_momentum=False: the target is the online "
                "network under stop-gradient. Remove the call, or construct BYOL with use_momentum=True."
            )
        self._ema_calls.update_called(self.ema_step)
        tau = self.tau
        online = self.online_parameters()
        if self.check_finite:
            check_online_weights(online, {"net": self.net, "projector": self.projector})
        ema_update_(self.target_parameters(), online, tau)
        self.ema_step += 1
        return tau

    def reset_moving_average(self) -> None:
        """Copy the online weights into the target and restart the tau schedule."""
        if self.use_momentum:
            ema_update_(self.target_parameters(), self.online_parameters(), 0.0)
        self.ema_step = 0

    def remove_hooks(self) -> None:
        """Kept for byol-pytorch users: byol-wrap's hooks exist only during a forward pass,
        so there is never a hook left on the net to remove."""

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
        # checkpoints of byol-wrap 0.1.0 hold the augmentations' buffers; they are no state now
        for key in [k for k in state_dict if k.startswith((prefix + "augment1.", prefix + "augment2."))]:
            del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, *args)

    def get_extra_state(self) -> Dict[str, Any]:
        return {"ema_step": self.ema_step}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.ema_step = int(state["ema_step"])

    def extra_repr(self) -> str:
        return (
            f"hidden_layer={self.extractor.layer!r}, representation_size={self.representation_size}, "
            f"moving_average_decay={self.moving_average_decay}, total_steps={self.total_steps}, "
            f"use_momentum={self.use_momentum}, view_batching={self.view_batching!r}, "
            f"memory_format={self.memory_format!r}"
        )
