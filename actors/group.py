"""ActorGroup: gang-create N ranks of a worker class in a placement group and dispatch calls.

* ranks are placed with one bundle each (``{"CPU": c, "GPU": g}``) in a placement group, so a group
  starts all together or not at all (a clear error after ``start_timeout_s``);
* rank 0 picks the torch.distributed rendezvous address; every rank gets rank / world size / address;
* ``call`` broadcasts a method, ``call_split`` shards a list (or anything with ``shard(rank, world)``)
  by data-parallel rank; results come back in rank order;
* every wait is fail-fast: the first rank that raises or dies ends the wait with that rank's own
  error (Ray carries the remote traceback), the other calls are cancelled, no hang.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


class WorkerError(RuntimeError):
    """A rank failed; the message carries the group name, the rank and the remote error."""


class BaseWorker:
    """Mixin of every worker: rank bookkeeping and the rendezvous address."""

    def __init__(self, rank: int = 0, world_size: int = 1, master_addr: str = "", master_port: int = 0) -> None:
        self.rank, self.world_size = rank, world_size
        self.master_addr, self.master_port = master_addr, master_port

    def node_address(self) -> tuple[str, int]:
        import socket

        addr = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return addr, port

    def set_master(self, addr: str, port: int) -> None:
        self.master_addr, self.master_port = addr, port

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def ping(self) -> int:
        return self.rank


def _cancel(refs: Sequence[ray.ObjectRef]) -> None:
    """Best-effort cancel of the other ranks' calls. Actor tasks cannot be force-cancelled (Ray raises
    ValueError for force=True, which used to replace the failing rank's error); a rank stuck in a collective
    stays stuck until the group is shut down (ray.kill)."""
    for r in refs:
        with contextlib.suppress(Exception):
            ray.cancel(r)


def wait_all(refs: Sequence[ray.ObjectRef], what: str, timeout_s: float | None = None) -> list[Any]:
    """ray.get on every ref, failing as soon as one fails (with its error), not after all finish."""
    pending = list(refs)
    index = {r: i for i, r in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not ready:
            _cancel(pending)
            raise WorkerError(f"{what}: no answer within {timeout_s:.0f}s from ranks "
                              f"{sorted(index[r] for r in pending)}")
        r = ready[0]
        try:
            results[index[r]] = ray.get(r)
        except (RayTaskError, RayActorError) as e:
            _cancel(pending)
            raise WorkerError(f"{what} failed on rank {index[r]}:\n{e}") from e
    return results


def _wait_ready(pg: Any, name: str, bundles: list[dict[str, float]], timeout_s: float) -> bool:
    """Wait for a placement group, saying every 15 s what it waits for."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(pg.ready(), timeout=min(15.0, max(0.1, deadline - time.monotonic())))
            return True
        except GetTimeoutError:
            if time.monotonic() >= deadline:
                return False
            print(f"[raylhf] {name}: waiting for {len(bundles)} x {bundles[0]}; available now: "
                  f"{ray.available_resources()}", flush=True)


class ActorGroup:
    def __init__(
        self,
        worker_cls: type,
        num_ranks: int,
        *,
        name: str,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        strategy: str = "PACK",
        init_kwargs: dict[str, Any] | None = None,
        runtime_env: dict[str, Any] | None = None,
        start_timeout_s: float = 600.0,
    ) -> None:
        self.name, self.num_ranks = name, num_ranks
        bundles = [{"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {})} for _ in range(num_ranks)]
        self.pg: Any = placement_group(bundles, strategy=strategy, name=f"raylhf-{name}")
        self.actors: list[Any] = []
        if not _wait_ready(self.pg, name, bundles, start_timeout_s):
            self.shutdown()
            raise WorkerError(
                f"{name}: could not reserve {num_ranks} x {bundles[0]} within {start_timeout_s:.0f}s; cluster "
                f"resources: {ray.available_resources()}. Lower the {name} workers / CPUs / GPUs in the config "
                "or add nodes"
            )
        try:
            self._start(worker_cls, num_ranks, num_cpus, num_gpus, init_kwargs, runtime_env, start_timeout_s)
        except BaseException:
            self.shutdown()
            raise

    def _start(self, worker_cls: type, num_ranks: int, num_cpus: float, num_gpus: float,
               init_kwargs: dict[str, Any] | None, runtime_env: dict[str, Any] | None, start_timeout_s: float) -> None:
        name = self.name
        remote_cls = ray.remote(worker_cls)
        master: tuple[str, int] = ("", 0)
        for rank in range(num_ranks):
            opts: dict[str, Any] = dict(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=rank),
                max_concurrency=1,
            )
            if runtime_env:
                opts["runtime_env"] = runtime_env
            actor = remote_cls.options(**opts).remote(
                rank=rank, world_size=num_ranks, master_addr=master[0], master_port=master[1],
                **(init_kwargs or {}),
            )
            if rank == 0:
                master = tuple(wait_all([actor.node_address.remote()], f"{name} start-up", start_timeout_s)[0])
                wait_all([actor.set_master.remote(*master)], f"{name} start-up")
            self.actors.append(actor)
        self.master = master
        self.call("setup", timeout_s=start_timeout_s)

    def call(self, method: str, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> list[Any]:
        """The same call on every rank; results in rank order."""
        refs = [getattr(a, method).remote(*args, **kwargs) for a in self.actors]
        return wait_all(refs, f"{self.name}.{method}", timeout_s)

    def call_rank0(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return wait_all([getattr(self.actors[0], method).remote(*args, **kwargs)], f"{self.name}.{method}")[0]

    def call_split(self, method: str, data: Any, *args: Any, **kwargs: Any) -> list[Any]:
        """Shard ``data`` by rank (``data.shard(rank, world)`` or contiguous list slices) and call."""
        world = self.num_ranks
        if hasattr(data, "shard"):
            shards = [data.shard(r, world) for r in range(world)]
        else:
            items = list(data)
            bounds = [round(i * len(items) / world) for i in range(world + 1)]
            shards = [items[bounds[r] : bounds[r + 1]] for r in range(world)]
        refs = [getattr(a, method).remote(s, *args, **kwargs) for a, s in zip(self.actors, shards, strict=True)]
        return wait_all(refs, f"{self.name}.{method}")

    def shutdown(self) -> None:
        for a in self.actors:
            with contextlib.suppress(Exception):  # already dead
                ray.kill(a, no_restart=True)
        self.actors = []
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None
