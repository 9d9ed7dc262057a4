"""The wire of raylhf's weight transfer, without vLLM: a gloo process group of its own (the policy's sending rank is
rank 0, the engine workers the others) and byte buckets over it (``actors/vllm_transfer.py`` has the format)."""

from __future__ import annotations

import datetime
import pickle
from collections.abc import Iterator
from typing import Any

import torch

from actors.netif import configure_socket_ifname

STORE_PREFIX = "raylhf-weights"


def join_group(host: str, port: int, rank: int, world_size: int, timeout_s: float, is_master: bool = False) -> Any:
    """A gloo process group of its own (not torch.distributed's default one): rank 0 hosts the store at ``host``
    (the policy's node address). Its sockets use the interface of this node's Ray address (``actors/netif.py``;
    GLOO_SOCKET_IFNAME wins); where Ray is not initialised (a vLLM worker process), that of the route to ``host``."""
    import torch.distributed as dist

    configure_socket_ifname("weight-sync group", peer=host)

    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=is_master, timeout=timeout, wait_for_workers=False)
    return dist.ProcessGroupGloo(dist.PrefixStore(STORE_PREFIX, store), rank, world_size, timeout)


def broadcast(pg: Any, t: torch.Tensor) -> None:
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    pg.broadcast([t], opts).wait()


def send_bucket(pg: Any, items: list[tuple[str, torch.Tensor]]) -> None:
    """Rank 0's side of one bucket (an empty list ends the transfer)."""
    meta, offset = [], 0
    for name, t in items:
        n = t.numel() * t.element_size()
        meta.append((name, str(t.dtype).removeprefix("torch."), tuple(t.shape), offset, n))
        offset += n
    blob = pickle.dumps(meta) if items else b""
    broadcast(pg, torch.tensor([len(blob)], dtype=torch.int64))
    if not items:
        return
    broadcast(pg, torch.frombuffer(bytearray(blob), dtype=torch.uint8))
    data = torch.empty(offset, dtype=torch.uint8)
    for (_, t), (_, _, _, off, n) in zip(items, meta, strict=True):
        data[off:off + n].copy_(t.detach().contiguous().view(-1).view(torch.uint8))
    broadcast(pg, data)


def receive_buckets(pg: Any) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """A receiving rank's side: the buckets as (name, tensor) lists, until the sender's end marker."""
    while True:
        size = torch.zeros(1, dtype=torch.int64)
        broadcast(pg, size)
        if int(size) == 0:
            return
        blob = torch.empty(int(size), dtype=torch.uint8)
        broadcast(pg, blob)
        meta = pickle.loads(blob.numpy().tobytes())
        data = torch.empty(sum(m[4] for m in meta), dtype=torch.uint8)
        broadcast(pg, data)
        yield [(name, data[off:off + n].view(getattr(torch, dtype)).view(shape))
               for name, dtype, shape, off, n in meta]
