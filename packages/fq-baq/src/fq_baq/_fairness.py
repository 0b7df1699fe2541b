"""The fairness penalty of METHOD.md eq. 4, vectorized (no loop over groups, no host sync)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def group_gap(per_sample: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``max_g mean_{i in g} v_i - min_g mean_{i in g} v_i`` over the groups present; 0 if < 2.

    ``per_sample`` is ``[N]`` float, ``groups`` ``[N]`` integer ids (any values). Each sample gets
    its group's mean through an ``[N, N]`` same-group mask, so the number of groups need not be
    known and absent groups never enter; cost ``O(N^2)``, negligible for training batch sizes.
    """
    if per_sample.shape[0] == 0:
        return per_sample.sum()
    same = (groups[:, None] == groups[None, :]).to(per_sample.dtype)
    group_mean = (same @ per_sample) / same.sum(dim=1)
    return group_mean.max() - group_mean.min()


def _check_inputs(logits: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(
            f"logits must be a float [N, C] tensor; got {getattr(logits, 'shape', logits)!r}"
        )
    n = logits.shape[0]
    for name, t in (("targets", targets), ("groups", groups)):
        if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(
                f"{name} must be an integer torch.Tensor; got {getattr(t, 'dtype', type(t))}"
            )
        if tuple(t.shape) != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match logits; got {tuple(t.shape)}")


def fairness_penalty(
    logits: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor
) -> torch.Tensor:
    """``L_fair = max_g L_g - min_g L_g`` (METHOD.md eq. 4), a differentiable scalar.

    Args:
        logits: ``[N, C]`` float class scores.
        targets: ``[N]`` int class indices.
        groups: ``[N]`` int sensitive-group ids.

    Returns:
        0-dim tensor (nats): ``L_g`` is the mean cross-entropy over the samples of group ``g`` in
        the batch; max minus min over the groups present, 0 when fewer than two are present.

    >>> import torch
    >>> from fq_baq import fairness_penalty
    >>> logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    >>> pen = fairness_penalty(logits, torch.tensor([0, 0, 0, 0]), torch.tensor([0, 0, 1, 1]))
    >>> round(float(pen), 4)  # log 2 - log(1 + e^-2)
    0.5662
    """
    _check_inputs(logits, targets, groups)
    ce = F.cross_entropy(logits.float(), targets.long(), reduction="none")
    return group_gap(ce, groups)
