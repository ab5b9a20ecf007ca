"""The job: ``byol-wrap pretrain | export | embed | layers`` and :func:`byol_wrap.pretrain`.

Folders of images in, a pretrained encoder out. Built on :mod:`byol_wrap.core` (the library), which never
imports this package. Its extra dependencies come with ``pip install "byol-wrap[train]"``.

``cli`` (the command line) -> ``train`` (``pretrain()``, the training run) -> ``data`` (finding, decoding and
loading images), ``models`` (model specs), ``monitor`` (metrics, plots), ``checkpoint``, ``encoder``
(``encoder.pt``: export, load, embed) and ``io`` (atomic writes, safe loads).

Example:
    >>> from byol_wrap.job.models import small_cnn
    >>> small_cnn()[-1]
    Flatten(start_dim=1, end_dim=-1)
"""
