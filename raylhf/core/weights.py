"""Weight-sync verification, as pure functions: a checksum per HF-named tensor (computed by the sender on what it
sends and by every engine on what it received), their comparison, and the fixed probe sequence whose log-probs
the policy and the engines must agree on after a sync."""

from __future__ import annotations

import torch


def tensor_checksum(t: torch.Tensor) -> int:
    """A wrapping 64-bit sum of the tensor's bytes (read as int64 / int32 / uint8 words, whatever divides its size):
    one pass at memory speed, order-independent within the tensor, and changed by a skipped, zeroed or corrupted
    tensor (two compensating corruptions aside). The dtype and shape are compared separately."""
    flat = t.detach().contiguous().view(-1)
    if flat.numel() == 0:
        return 0
    raw = flat.view(torch.uint8)
    for dtype, size in ((torch.int64, 8), (torch.int32, 4)):
        if raw.numel() % size == 0:
            return int(raw.view(dtype).sum(dtype=torch.int64))
    return int(raw.sum(dtype=torch.int64))


def tensor_entry(t: torch.Tensor) -> tuple[str, tuple[int, ...], int]:
    """(dtype, shape, checksum): what a sync verification compares per tensor."""
    return str(t.dtype).removeprefix("torch."), tuple(t.shape), tensor_checksum(t)


def compare_checksums(sent: dict[str, tuple[str, tuple[int, ...], int]],
                      received: dict[str, tuple[str, tuple[int, ...], int]], where: str = "the engine") -> list[str]:
    """What differs between the sender's manifest and what ``where`` received, one line per tensor (empty: equal):
    missing, unexpected, or a different dtype, shape or checksum."""
    problems = []
    for name, (dtype, shape, ck) in sent.items():
        got = received.get(name)
        if got is None:
            problems.append(f"{name}: sent but never received by {where}")
        elif (got[0], tuple(got[1])) != (dtype, tuple(shape)):
            problems.append(f"{name}: sent {dtype}{list(shape)}, {where} received {got[0]}{list(got[1])}")
        elif int(got[2]) != int(ck):
            problems.append(f"{name}: checksum differs (sent {ck}, {where} received {got[2]}): corrupted on the way")
    problems += [f"{name}: received by {where} but not sent" for name in received if name not in sent]
    return problems


def probe_ids(vocab_size: int, length: int = 32, seed: int = 0) -> list[int]:
    """A fixed token sequence (its own generator: no global RNG touched) for the post-sync log-prob probe."""
    g = torch.Generator().manual_seed(1_234_567 + seed)
    return torch.randint(3, max(4, vocab_size), (length,), generator=g).tolist()


def probe_gap(policy: list[float], engine: list[float]) -> float:
    """Largest absolute difference between two log-prob lists of the probe (first token excluded: no context)."""
    if len(policy) != len(engine):
        raise ValueError(f"probe log-probs of different lengths: policy {len(policy)}, engine {len(engine)}")
    return max((abs(a - b) for a, b in zip(policy[1:], engine[1:], strict=True)), default=0.0)
