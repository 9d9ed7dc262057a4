"""ActorGroup: gang-create N ranks of a worker class in a placement group and dispatch calls.

* ranks are placed with one bundle each (``{"CPU": c, "GPU": g}``) in a placement group, so a group
  starts all together or not at all: a clear error at once when the group can never fit a cluster that
  cannot add nodes (``ray.autoscaling``), else after ``start_timeout_s`` with progress lines meanwhile;
* rank 0 picks the torch.distributed rendezvous address; every rank gets rank / world size / address;
* ``call`` broadcasts a method, ``call_split`` shards a list (or anything with ``shard(rank, world)``)
  by data-parallel rank; results come back in rank order;
* every wait is fail-fast: the first rank that raises or dies ends the wait with that rank's own
  error (Ray carries the remote traceback), the other calls are cancelled, no hang;
* every call has the watchdog's limit (``call_timeout_s``, from ``runtime.phase_timeout_s``): ranks that do not
  answer in time end the wait with PhaseTimeoutError and their Python stacks (actors/watchdog.py).
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors import watchdog
from actors.calls import Pending, wait_all
from actors.reserve import SharedPlacement, wait_ready
from raylhf.plugins.registry import actor_env


class BaseWorker:
    """Mixin of every worker: rank bookkeeping, the rendezvous address and the watchdog's ``stacks``.

    Create workers through ActorGroup: ``stacks`` needs the actor class declared with
    ``ray.remote(concurrency_groups=watchdog.CONCURRENCY_GROUPS)`` (plain ``ray.remote`` fails with a bare
    AssertionError at ``.remote()``). With a concurrency group Ray runs every method, ``setup`` included, on
    one background thread of the actor (``__init__`` on the main thread), not on the main thread."""

    def __init__(self, rank: int = 0, world_size: int = 1, master_addr: str = "", master_port: int = 0) -> None:
        self.rank, self.world_size = rank, world_size
        self.master_addr, self.master_port = master_addr, master_port
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENT_LOG_SIZE)
        pin_visible_gpus()

    def record(self, event: str, **facts: Any) -> None:
        """Note ``event`` in this worker's event log (wall time, the device's free memory on CUDA, ``facts``):
        the colocated phases' order and memory (``raylhf/driver/colocate.py`` collects them)."""
        entry: dict[str, Any] = {"t": time.time(), "event": event, "rank": self.rank, **facts}
        entry.update(gpu_memory())
        self._events.append(entry)

    def event_log(self, clear: bool = True) -> list[dict[str, Any]]:
        """The events recorded since the last call (``clear``) or all kept ones."""
        out = list(self._events)
        if clear:
            self._events.clear()
        return out

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

    @ray.method(concurrency_group=watchdog.WATCHDOG_GROUP)
    def stacks(self) -> dict[str, Any]:
        """``{"pid", "node", "node_id", "rank", "class", "stacks"}``: the Python stack of every thread (the one
        running the actor call first) and of the pending asyncio tasks of the worker's event loops. Runs in its
        own concurrency group, so it answers while a call is busy (sleeping, waiting, in C code without the
        GIL); ActorGroup creates the actors with that group."""
        return watchdog.snapshot(getattr(self, "rank", None), type(self).__name__, watchdog.event_loops(self))


EVENT_LOG_SIZE = 1000


def pin_visible_gpus() -> None:
    """Make the GPUs Ray assigned to this actor the only visible ones, before CUDA starts in the process.

    Ray 2.60 leaves CUDA_VISIBLE_DEVICES unset for an actor that asked for no GPU, so on a GPU node it would see
    every GPU and pick cuda:0 (two such ranks collide: NCCL's "duplicate GPU"); a fractional actor gets its one
    GPU. Here: the assigned ids when there are any, else no GPU at all. ``RAYLHF_VISIBLE_GPUS`` (set by the
    start-up for a colocated engine whose tensor-parallel shards span several bundles' GPUs) wins."""
    import os

    explicit = os.environ.get("RAYLHF_VISIBLE_GPUS")
    if explicit is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = explicit
        return
    if not ray.is_initialized():
        return
    try:
        from ray._private import worker as ray_worker
    except ImportError:  # a stand-in for ray (benchmarks/gpu_pytest_plugin.py)
        return
    if ray_worker.global_worker.mode != ray.WORKER_MODE:
        return  # a driver or a test building a worker in its own process: leave its devices alone
    ids = ray.get_gpu_ids()
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in ids)


def gpu_memory() -> dict[str, float]:
    """``{"gpu_free_gib", "gpu_used_gib"}`` of this process's CUDA device (what every process on it uses), or {}
    without CUDA."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    free, total = torch.cuda.mem_get_info()
    return {"gpu_free_gib": free / 2**30, "gpu_used_gib": (total - free) / 2**30}


def actor_omp_env(pipelined: bool) -> dict[str, str]:
    """OpenMP settings for actors that compute at the same time as each other (``grpo.async_steps``): idle
    OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``) instead of spinning, unless the driver's environment
    sets a policy. Measured on the 2-core CI machine (docs/performance.md): two processes with 2 torch threads
    each running at once lose most of their speed to each other's spinning threads (ACTIVE: 65% of the
    machine's throughput between them, PASSIVE: 113%), while one at a time the default (spinning) is faster.
    libgomp reads it once at start-up, so it goes into the actors' environment."""
    import os

    if not pipelined or "OMP_WAIT_POLICY" in os.environ:
        return {}
    return {"OMP_WAIT_POLICY": "PASSIVE"}


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
        sizing: str | None = None,
        call_timeout_s: float | None = None,
        env: dict[str, str] | None = None,
        max_concurrency: int = 1,
        wait: bool = True,
        shared: SharedPlacement | None = None,
        bundle_index: list[int] | None = None,
        resources: dict[str, float] | None = None,
    ) -> None:
        """``sizing``: the config fields that size this group, named when it cannot be placed.
        ``call_timeout_s``: the watchdog's limit on every call (``runtime.phase_timeout_s``); None or 0: none.
        ``env``: environment variables of the run for its actors (e.g. ``actor_omp_env``).
        ``max_concurrency``: calls one actor runs at once, each on a thread of its own (rollout engines: many).
        ``wait``: wait for the ranks' ``setup``; False: return once they are placed, and ``ready()`` waits (so a
        slow start, a vLLM engine's, overlaps with the other groups').
        ``shared`` / ``bundle_index``: place rank r in bundle ``bundle_index[r]`` of a placement group shared with
        other groups (not removed by this group's shutdown) instead of a placement group of its own.
        ``resources``: Ray custom resources each rank's bundle asks for besides its CPUs / GPUs (e.g.
        ``{"engine_node": 1}``: only nodes started with ``--resources '{"engine_node": N}'`` take the group)."""
        self.name, self.num_ranks, self.env = name, num_ranks, dict(env or {})
        self.max_concurrency = max_concurrency
        self._inflight: list[tuple[ray.ObjectRef, int, float]] = []  # routed calls (submit_routed)
        self.call_timeout_s = call_timeout_s or None
        self.actors: list[Any] = []
        self._bundle_index = list(bundle_index) if bundle_index is not None else list(range(num_ranks))
        if shared is not None:
            if len(self._bundle_index) != num_ranks:
                raise ValueError(f"{name}: {num_ranks} ranks but {len(self._bundle_index)} bundle indices")
            self.pg, self._owns_pg = shared.pg, False
        else:
            bundles = [{"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {}), **(resources or {})}
                       for _ in range(num_ranks)]
            self.pg, self._owns_pg = placement_group(bundles, strategy=strategy, name=f"raylhf-{name}"), True
        try:
            if self._owns_pg:
                wait_ready(self.pg, name, bundles, strategy, start_timeout_s, sizing)
            self._start(worker_cls, num_ranks, num_cpus, num_gpus, init_kwargs, runtime_env, start_timeout_s)
            if wait:
                self.ready()
        except BaseException:
            self.shutdown()
            raise

    def _start(self, worker_cls: type, num_ranks: int, num_cpus: float, num_gpus: float,
               init_kwargs: dict[str, Any] | None, runtime_env: dict[str, Any] | None, start_timeout_s: float) -> None:
        name = self.name
        self._remote_cls = ray.remote(concurrency_groups=watchdog.CONCURRENCY_GROUPS)(worker_cls)  # for BaseWorker.stacks
        self._init_kwargs = dict(init_kwargs or {})
        self._start_timeout_s = start_timeout_s
        self.restarts = 0
        self._opts: dict[str, Any] = dict(num_cpus=num_cpus, num_gpus=num_gpus,
                                           max_concurrency=self.max_concurrency)

        env = {**actor_env(), **self.env}  # the run's plugin files (loaded at the first registry lookup), ...
        if env:
            runtime_env = dict(runtime_env or {})
            runtime_env["env_vars"] = {**dict(runtime_env.get("env_vars") or {}), **env}
        if runtime_env:
            self._opts["runtime_env"] = runtime_env
        master: tuple[str, int] = ("", 0)
        for rank in range(num_ranks):
            actor = self._new_actor(rank, master)
            if rank == 0:
                master = tuple(wait_all([actor.node_address.remote()], f"{name} start-up", start_timeout_s)[0])
                wait_all([actor.set_master.remote(*master)], f"{name} start-up")
            self.actors.append(actor)
        self.master = master
        refs, actors = [a.setup.remote() for a in self.actors], list(self.actors)
        self._setup = Pending(lambda: self._wait(refs, "setup", start_timeout_s, actors))

    def ready(self) -> ActorGroup:
        """Wait for the ranks' ``setup`` (started by the constructor; at once unless ``wait=False``)."""
        self._setup.result()
        return self

    def _new_actor(self, rank: int, master: tuple[str, int]) -> Any:
        strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=self._bundle_index[rank])
        return self._remote_cls.options(scheduling_strategy=strategy, **self._opts).remote(
            rank=rank, world_size=self.num_ranks, master_addr=master[0], master_port=master[1], **self._init_kwargs,
        )

    def dead_ranks(self, timeout_s: float = 30.0) -> list[int]:
        """Ranks whose actor has died (a ping fails with RayActorError); a rank that does not answer within
        ``timeout_s`` counts as alive (busy)."""
        refs = [a.ping.remote() for a in self.actors]
        ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        dead = []
        for rank, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=0)
            except RayActorError:
                dead.append(rank)
            except Exception:  # GetTimeoutError: busy, not dead
                pass
        return dead

    def restart_dead(self) -> list[int]:
        """Replace the dead ranks by fresh actors in the same placement-group bundles and set them up
        (for groups without a rendezvous between ranks: rollout engines, reward workers). Returns the
        restarted ranks; ``restarts`` counts them over the group's life."""
        dead = self.dead_ranks()
        for rank in dead:
            with contextlib.suppress(Exception):
                ray.kill(self.actors[rank], no_restart=True)
            self.actors[rank] = self._new_actor(rank, self.master)
        if dead:
            wait_all([self.actors[r].setup.remote() for r in dead], f"{self.name} restart", self._start_timeout_s)
            self.restarts += len(dead)
        return dead

    def _wait(self, refs: list[ray.ObjectRef], method: str, timeout_s: float | None, actors: list[Any],
              ranks: list[int] | None = None) -> list[Any]:
        """wait_all under the watchdog: the limit is ``timeout_s`` when given (0: none), else the group's
        ``call_timeout_s``; on expiry PhaseTimeoutError with the silent ranks' stacks."""
        if timeout_s is None:
            limit, field = self.call_timeout_s, watchdog.TIMEOUT_FIELD
        else:
            limit, field = timeout_s or None, "this call's timeout_s"
        return wait_all(refs, f"{self.name}.{method}", limit, actors, field, ranks)

    def call(self, method: str, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> list[Any]:
        """The same call on every rank; results in rank order. ``timeout_s``: see ``_wait``."""
        refs = [getattr(a, method).remote(*args, **kwargs) for a in self.actors]
        return self._wait(refs, method, timeout_s, list(self.actors))

    def call_rank0(self, method: str, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> Any:
        """The call on rank 0 only. ``timeout_s``: see ``_wait``."""
        refs = [getattr(self.actors[0], method).remote(*args, **kwargs)]
        return self._wait(refs, method, timeout_s, self.actors[:1])[0]

    def call_split(self, method: str, data: Any, *args: Any, timeout_s: float | None = None, **kwargs: Any
                   ) -> list[Any]:
        """Shard ``data`` by rank (``data.shard(rank, world)`` or contiguous list slices) and call.
        ``timeout_s``: see ``_wait``."""
        return self.submit_split(method, data, *args, timeout_s=timeout_s, **kwargs).result()

    def submit_split(self, method: str, data: Any, *args: Any, timeout_s: float | None = None, **kwargs: Any
                     ) -> Pending:
        """``call_split`` without waiting: the ranks start now, ``.result()`` waits (under the watchdog limit,
        counted from when ``result`` is called) and raises what ``call_split`` would."""
        world = self.num_ranks
        if hasattr(data, "shard"):
            shards = [data.shard(r, world) for r in range(world)]
        else:
            items = list(data)
            bounds = [round(i * len(items) / world) for i in range(world + 1)]
            shards = [items[bounds[r] : bounds[r + 1]] for r in range(world)]
        refs = [getattr(a, method).remote(s, *args, **kwargs) for a, s in zip(self.actors, shards, strict=True)]
        actors = list(self.actors)
        return Pending(lambda: self._wait(refs, method, timeout_s, actors))

    def submit_routed(self, method: str, items: list[Any], *args: Any, cost: Callable[[Any], float] | None = None,
                      timeout_s: float | None = None, **kwargs: Any) -> Pending:
        """One call per item, each sent to the rank with the least outstanding work at that moment (``cost(item)``
        summed over its calls not finished yet, this group's earlier calls included; default 1 per call).
        ``.result()`` is the calls' results in item order (fail-fast, under the watchdog limit like ``call``)."""
        outstanding = self._outstanding()
        refs, actors, ranks = [], [], []
        for item in items:
            rank = min(range(self.num_ranks), key=lambda r: (outstanding[r], r))
            c = float(cost(item)) if cost is not None else 1.0
            outstanding[rank] += c
            ref = getattr(self.actors[rank], method).remote([item], *args, **kwargs)
            self._inflight.append((ref, rank, c))
            refs.append(ref)
            actors.append(self.actors[rank])
            ranks.append(rank)
        return Pending(lambda: self._wait(refs, method, timeout_s, actors, ranks))

    def _outstanding(self) -> list[float]:
        """Work per rank of the routed calls not finished yet."""
        inflight = self._inflight
        if inflight:
            refs = [r for r, _, _ in inflight]
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            finished = set(done)
            inflight = [x for x in inflight if x[0] not in finished]
        self._inflight = inflight
        load = [0.0] * self.num_ranks
        for _, rank, c in inflight:
            if rank < self.num_ranks:
                load[rank] += c
        return load

    def shutdown(self) -> None:
        for a in self.actors:
            with contextlib.suppress(Exception):  # already dead
                ray.kill(a, no_restart=True)
        self.actors = []
        if self.pg is not None and self._owns_pg:
            remove_placement_group(self.pg)
        self.pg = None
