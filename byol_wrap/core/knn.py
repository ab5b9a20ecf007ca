"""Weighted kNN evaluation of learned representations (the usual self-supervised monitor).

Features are l2-normalised, neighbours found by cosine similarity, and each of the k
nearest bank samples votes for its label with weight ``exp(similarity / temperature)``
(Wu et al. 2018, as used by many SSL code bases: k=200, temperature 0.1).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def knn_predict(
    features: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: Optional[int] = None,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Weighted-kNN class predictions for ``features`` given a labelled ``bank``.

    Args:
        features: ``(Q, D)`` query features.
        bank: ``(B, D)`` bank features.
        bank_labels: ``(B,)`` integer labels of the bank.
        num_classes: number of classes (default: ``max(label) + 1``).
        k: neighbours (clipped to the bank size).
        temperature: softmax temperature of the similarity weights.

    Returns:
        ``(Q,)`` predicted labels.

    Example:
        >>> bank = torch.eye(3); labels = torch.tensor([0, 1, 2])
        >>> knn_predict(torch.tensor([[0.9, 0.1, 0.0]]), bank, labels, k=2)
        tensor([0])
    """
    if features.ndim != 2 or bank.ndim != 2 or features.shape[1] != bank.shape[1]:
        raise ValueError(f"features {tuple(features.shape)} and bank {tuple(bank.shape)} must be (N, D) with equal D")
    if bank_labels.shape != (bank.shape[0],):
        raise ValueError(f"bank_labels must have shape ({bank.shape[0]},), got {tuple(bank_labels.shape)}")
    if k <= 0 or temperature <= 0:
        raise ValueError(f"k and temperature must be positive, got k={k}, temperature={temperature}")
    num_classes = int(bank_labels.max()) + 1 if num_classes is None else num_classes
    k = min(k, bank.shape[0])
    bank = F.normalize(bank.float(), dim=1)
    bank_labels = bank_labels.long()
    predictions = []
    for start in range(0, features.shape[0], chunk_size):
        query = F.normalize(features[start:start + chunk_size].float(), dim=1)
        similarity, index = (query @ bank.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(query.shape[0], num_classes, device=query.device)
        votes.scatter_add_(1, bank_labels[index], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


@torch.no_grad()
def embed(encode: Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 512) -> Tensor:
    """Apply ``encode`` to ``images`` in batches and concatenate the results.

    Example:
        >>> embed(lambda x: x.flatten(1), torch.zeros(10, 1, 2, 2), batch_size=4).shape
        torch.Size([10, 4])
    """
    return torch.cat([encode(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)])


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """Top-1 accuracy (0-1) of weighted kNN: bank = train split, queries = test split.

    Example:
        >>> f = torch.eye(4); y = torch.tensor([0, 1, 2, 3])
        >>> knn_accuracy(f, y, f, y, k=1)
        1.0
    """
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    predicted = knn_predict(test_features, train_features, train_labels, num_classes, k, temperature)
    return (predicted.cpu() == test_labels.cpu()).float().mean().item()


def knn_eval(
    encode: Callable[[Tensor], Tensor],
    bank_images: Tensor,
    bank_labels: Tensor,
    query_images: Tensor,
    query_labels: Tensor,
    module: Optional[nn.Module] = None,
    batch_size: int = 512,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """Weighted-kNN top-1 accuracy (0-1) of ``encode``'s features: the bank images vote for the
    query images' labels (:func:`knn_accuracy`).

    ``encode`` maps a batch of images to features (e.g. a learner's
    ``learner(x, return_embedding=True, return_projection=False)``, which normalises them as
    the views were). ``module`` (the net or learner behind ``encode``) is put in eval mode for
    the evaluation and back in its previous mode afterwards; no gradients are recorded.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4))
        >>> x, y = torch.eye(4).view(4, 1, 2, 2), torch.tensor([0, 1, 2, 3])
        >>> knn_eval(net, x, y, x, y, module=net, k=1)
        1.0
        >>> net.training
        True
    """
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        with torch.no_grad():
            bank = embed(encode, bank_images, batch_size)
            query = embed(encode, query_images, batch_size)
    finally:
        if module is not None:
            module.train(was_training)
    return knn_accuracy(bank, bank_labels, query, query_labels, k=k, temperature=temperature)
