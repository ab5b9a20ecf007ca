"""Batches made in a background thread of this process: for data already at hand (a full image cache).

Reading a cached batch is one memory copy per image (numpy releases the GIL while it copies), so a thread
keeps up with a GPU where DataLoader worker processes would only add cost: each batch would be copied into
fresh shared memory and handed across processes, several times the copy itself (benchmarks/loader.py).

Example:
    >>> from byol_wrap.job.data.loader import Batch
    >>> class Squares:
    ...     def __getitems__(self, indices):
    ...         return Batch(torch.tensor(indices) ** 2, torch.tensor(indices), [])
    >>> [b.images.tolist() for b in threaded_batches(Squares(), iter([[1, 2], [3]]))]
    [[1, 4], [9]]
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Iterator, List

import torch

from .loader import Batch

__all__ = ["threaded_batches"]

_DONE = object()


def threaded_batches(dataset: Any, batches: Iterator[List[int]], pin_memory: bool = False,
                     prefetch: int = 3) -> Iterator[Batch]:
    """``dataset.__getitems__(indices)`` for each ``indices`` of ``batches``, in order, made up to ``prefetch``
    batches ahead by a daemon thread; an error in the thread is raised here. Stopping early stops the thread.
    """
    results: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for indices in batches:
                if stop.is_set():
                    return
                batch = dataset.__getitems__(indices)
                if pin_memory and torch.cuda.is_available():
                    batch = Batch(batch.images.pin_memory(), batch.indices, batch.skipped)
                if not put(batch):
                    return
            put(_DONE)
        except BaseException as error:  # handed to the consumer
            put(error)

    thread = threading.Thread(target=work, name="byol-wrap-batches", daemon=True)
    thread.start()
    try:
        while True:
            item: Any = results.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
