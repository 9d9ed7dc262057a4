"""Masked reductions shared by the algorithm families.

Masks may be ``bool`` or ``0/1`` floating tensors broadcastable to the data. Masked-out entries never
contribute, even when they hold ``inf`` / ``nan`` (e.g. padded log-probs), and an empty selection
reduces to ``0`` instead of ``nan``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_mean", "masked_sum", "masked_var", "masked_whiten", "to_float", "upcast"]


def _mask_like(x: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return torch.ones_like(x)
    return mask.to(x.dtype).expand_as(x)


def masked_sum(x: Tensor, mask: Tensor | None = None, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """``sum(x * mask)`` over ``dim`` (all dims when ``None``), ignoring non-finite masked entries."""
    m = _mask_like(x, mask)
    xm = torch.where(m != 0, x, torch.zeros_like(x)) * m
    return xm.sum() if dim is None else xm.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor | None = None, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Masked mean ``sum(x * mask) / sum(mask)``; ``0`` where the mask selects nothing.

    The empty case is resolved with a safe denominator (not ``torch.where`` on a ``nan``), so the
    gradient stays finite as well.
    """
    m = _mask_like(x, mask)
    num = masked_sum(x, m, dim)
    den = m.sum() if dim is None else m.sum(dim=dim)
    safe = torch.where(den != 0, den, torch.ones_like(den))
    return num / safe


def masked_var(
    x: Tensor, mask: Tensor | None = None, dim: int | tuple[int, ...] | None = None, unbiased: bool = True
) -> Tensor:
    """Masked variance ``sum(mask * (x - mean)^2) / (n - 1)`` (``/ n`` when ``unbiased=False``).

    ``n = sum(mask)``; returns ``0`` when ``n <= 1`` (unbiased) or ``n == 0`` (biased) instead of ``nan``.
    """
    m = _mask_like(x, mask)
    mean = masked_mean(x, m, dim)
    if dim is not None:
        mean = mean.unsqueeze(dim) if isinstance(dim, int) else mean.reshape(_keepdim_shape(x, dim))
    sq = masked_sum((x - mean) ** 2, m, dim)
    n = m.sum() if dim is None else m.sum(dim=dim)
    den = n - 1 if unbiased else n
    safe = torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, sq / safe, torch.zeros_like(sq))


def _keepdim_shape(x: Tensor, dims: tuple[int, ...]) -> list[int]:
    norm = {d % x.dim() for d in dims}
    return [1 if i in norm else s for i, s in enumerate(x.shape)]


def masked_whiten(
    x: Tensor,
    mask: Tensor | None = None,
    *,
    shift_mean: bool = True,
    eps: float = 1e-6,
    unbiased: bool = True,
) -> Tensor:
    """Whiten over all selected entries: ``(x - mean) / (std + eps)``, masked entries set to ``0``.

    With ``shift_mean=False`` the mean is added back (scale only), as in the PPO implementations of
    Ziegler et al. (2019) / Huang et al. (2022, "The 37 implementation details of PPO"). The
    statistics are global (``dim=None``): REINFORCE++ (Hu, 2025) whitens over the whole batch.
    """
    m = _mask_like(x, mask)
    mean = masked_mean(x, m)
    std = masked_var(x, m, unbiased=unbiased).sqrt()
    out = (x - mean) / (std + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m != 0, out, torch.zeros_like(out))


def upcast(x: Tensor) -> Tensor:
    """``x`` in at least float32 (half / bfloat16 / integer inputs are promoted; float64 is kept)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def to_float(x: Tensor | float | int) -> float:
    """Detach a scalar tensor into a Python float for a metrics dict."""
    if isinstance(x, Tensor):
        return float(x.detach().float().item())
    return float(x)
