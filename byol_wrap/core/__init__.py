"""The library: BYOL around any backbone, in the order data flows through the learner.

``augment`` (``augment_channels``: its stages for images that are not RGB) -> ``probe``/``hooks``/``pooling``
(encode through a forward hook) -> ``heads`` (projector, predictor) -> ``loss`` -> ``ema`` (the target), with
``batchnorm`` (per-view statistics in one pass), ``memory_format``, ``checks`` (finite checks), ``byol`` (the
``BYOL`` module that ties them together), and the helpers a training loop calls: ``optim``, ``wrappers``,
``knn``, ``layers``, ``rng``.

This package imports torch, torchvision and kornia only, and never :mod:`byol_wrap.job`.

Example:
    >>> import torch
    >>> from byol_wrap.core.loss import byol_loss
    >>> float(byol_loss(torch.ones(2, 4), torch.ones(2, 4)).mean())
    0.0
"""
