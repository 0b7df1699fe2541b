"""Reading the toolkit's ``(image, label, group)`` batches, for every loop that consumes them."""

from __future__ import annotations

from collections.abc import Mapping

import torch

#: Keys of a mapping batch; a tuple batch holds the same tensors in this order.
BATCH_KEYS = ("image", "label", "group")


def unpack_batch(
    batch: object, *, index: int | None = None, need_groups: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(x [B, ...], y int64 [B], g int64 [B])`` from one batch, checked.

    Args:
        batch: an ``(x, y, g)`` tuple/list or a mapping with keys ``image``, ``label``, ``group``;
            with ``need_groups=False`` also ``(x, y)`` or a mapping without ``group``.
        index: the batch's position in its loader, named in errors when given.
        need_groups: whether a batch must carry the sensitive group of each sample.

    Returns:
        ``x`` as given, ``y`` and ``g`` as ``int64``; ``g`` is ``None`` when the batch has no groups
        (only with ``need_groups=False``). Raises ``TypeError``/``ValueError`` naming the batch and
        the field for another container, missing fields, non-tensor or non-integer labels/groups,
        one label/group per sample violated, or an empty batch.

    >>> import torch
    >>> from fq_quant import unpack_batch
    >>> x, y, g = unpack_batch({"image": torch.zeros(2, 3), "label": torch.tensor([1, 0]),
    ...                         "group": torch.tensor([0, 1])})
    >>> y.dtype, g.tolist()
    (torch.int64, [0, 1])
    >>> unpack_batch((torch.zeros(2, 3), torch.tensor([1, 0])), need_groups=False)[2] is None
    True
    """
    where = "batch" if index is None else f"batch {index}"
    needed = BATCH_KEYS if need_groups else BATCH_KEYS[:2]
    if isinstance(batch, Mapping):
        missing = [k for k in needed if k not in batch]
        if missing:
            raise ValueError(
                f"{where} lacks key(s) {missing} (has {list(batch)[:6]}); batches need "
                f"{list(needed)}" + (" (the sensitive group of each sample)" if need_groups else "")
            )
        x, y, g = batch["image"], batch["label"], batch.get("group")
    elif isinstance(batch, (tuple, list)):
        if len(batch) not in (len(needed), 3):
            want = (
                "(x, y, g) with the sensitive group g of each sample"
                if need_groups
                else "(x, y) or (x, y, g)"
            )
            raise ValueError(f"{where} is a {len(batch)}-tuple; batches need {want}")
        x, y = batch[0], batch[1]
        g = batch[2] if len(batch) == 3 else None
    else:
        raise TypeError(
            f"{where} must be an (x, y, g) tuple or a mapping; got {type(batch).__name__}"
        )
    fields = (("x", x), ("label", y)) + ((("group", g),) if g is not None else ())
    for name, t in fields:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: {name} must be a torch.Tensor; got {type(t).__name__}")
    n = x.shape[0] if x.dim() else 0
    for name, t in fields[1:]:
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{where}: {name} must be an integer tensor; got {t.dtype}")
        if t.dim() != 1 or t.shape[0] != n:
            raise ValueError(
                f"{where}: {name} must have shape [{n}] (one per sample); got {tuple(t.shape)}"
            )
    if n == 0:
        raise ValueError(f"{where} is empty")
    return x, y.to(torch.int64), None if g is None else g.to(torch.int64)
