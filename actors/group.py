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

import contextlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors import watchdog
from raylhf.core.errors import RunError
from raylhf.plugins.registry import actor_env


class WorkerError(RuntimeError):
    """A rank failed; the message carries the group name, the rank and the remote error. ``what`` is the
    phase (``group.method``), ``rank`` the failing rank, ``died`` whether its actor process is gone."""

    def __init__(self, message: str, what: str = "", rank: int | None = None, died: bool = False) -> None:
        super().__init__(message)
        self.what, self.rank, self.died = what, rank, died

    @property
    def group(self) -> str:
        return self.what.split(".", 1)[0]


class PhaseTimeoutError(WorkerError, RunError):
    """The watchdog fired: ranks did not answer a call within its limit. The message is the watchdog report
    (which ranks answered, the silent ones' Python stacks; see actors/watchdog.py)."""

    def cli_message(self) -> str:
        return str(self).splitlines()[0] + " (the watchdog report with the stacks is printed above)"


class BaseWorker:
    """Mixin of every worker: rank bookkeeping, the rendezvous address and the watchdog's ``stacks``.

    Create workers through ActorGroup: ``stacks`` needs the actor class declared with
    ``ray.remote(concurrency_groups=watchdog.CONCURRENCY_GROUPS)`` (plain ``ray.remote`` fails with a bare
    AssertionError at ``.remote()``). With a concurrency group Ray runs every method, ``setup`` included, on
    one background thread of the actor (``__init__`` on the main thread), not on the main thread."""

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

    @ray.method(concurrency_group=watchdog.WATCHDOG_GROUP)
    def stacks(self) -> dict[str, Any]:
        """``{"pid", "node", "node_id", "rank", "class", "stacks"}``: the Python stack of every thread (the one
        running the actor call first) and of the pending asyncio tasks of the worker's event loops. Runs in its
        own concurrency group, so it answers while a call is busy (sleeping, waiting, in C code without the
        GIL); ActorGroup creates the actors with that group."""
        return watchdog.snapshot(getattr(self, "rank", None), type(self).__name__, watchdog.event_loops(self))


def _cancel(refs: Sequence[ray.ObjectRef]) -> None:
    """Best-effort cancel of the other ranks' calls. Actor tasks cannot be force-cancelled (Ray raises
    ValueError for force=True, which used to replace the failing rank's error); a rank stuck in a collective
    stays stuck until the group is shut down (ray.kill)."""
    for r in refs:
        with contextlib.suppress(Exception):
            ray.cancel(r)


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


class Pending:
    """Calls started on a group's ranks; ``result()`` waits for them once (later calls return the same)."""

    def __init__(self, wait: Callable[[], list[Any]]) -> None:
        self._wait: Callable[[], list[Any]] | None = wait
        self._result: list[Any] | None = None

    def result(self) -> list[Any]:
        if self._wait is not None:
            wait, self._wait = self._wait, None
            self._result = wait()
        assert self._result is not None
        return self._result


def wait_all(refs: Sequence[ray.ObjectRef], what: str, timeout_s: float | None = None,
             actors: Sequence[Any] | None = None, limit_field: str = watchdog.TIMEOUT_FIELD) -> list[Any]:
    """ray.get on every ref, failing as soon as one fails (with its error), not after all finish.

    ``timeout_s`` (None: no limit): given ``actors`` (the BaseWorker running each ref, in the same order), a
    timeout raises PhaseTimeoutError with the watchdog report (also printed to stderr; ``limit_field`` names
    the setting to raise), else WorkerError naming the silent ranks."""
    pending = list(refs)
    index = {r: i for i, r in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not ready:
            silent = sorted(index[r] for r in pending)
            if actors is not None:  # the stacks first: cancelling may change them
                report = watchdog.watchdog_report(what, timeout_s or 0.0, actors, silent, limit_field)
                _cancel(pending)
                raise PhaseTimeoutError(report, what)
            _cancel(pending)
            raise WorkerError(f"{what}: no answer within {timeout_s:.0f}s from ranks {silent}", what)
        r = ready[0]
        try:
            results[index[r]] = ray.get(r)
        except (RayTaskError, RayActorError) as e:
            _cancel(pending)
            raise WorkerError(f"{what} failed on rank {index[r]}:\n{e}", what, index[r],
                              isinstance(e, RayActorError)) from e
    return results


# ---------------------------------------------------------------------------------------------------------
# Placement: can a group ever fit, and can the cluster grow?
#
# A placement group that does not fit waits for resources. That is right where an autoscaler can add nodes,
# or where other groups hold what it needs (they may free it); on a fixed cluster that is too small it only
# delays the failure. ``check_placement`` (pure) says whether the bundles fit the nodes' totals at all and
# whether they fit what is free now; ``can_autoscale`` says whether nodes may join.

_EPS = 1e-6
_UNBOUNDED = 1 << 30
POLL_S = 2.0  # how often a waiting group re-checks (the fail-fast latency on a fixed cluster)
PROGRESS_S = 15.0  # how often a waiting group says what it waits for

@dataclass(frozen=True)
class NodeCapacity:
    """One alive node: a display name, its total resources and what is free now."""

    name: str
    total: dict[str, float]
    free: dict[str, float]


@dataclass(frozen=True)
class PlacementCheck:
    possible: bool  # the bundles fit the nodes' totals (perhaps only once other groups free theirs)
    fits_free: bool  # they fit what is free now
    reason: str  # why not (possible, else free now); "" when they fit


def _num(x: float) -> str:
    return f"{x:g}"


def _fmt_bundle(bundle: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {_num(v)}" for k, v in bundle.items()) + "}"


def _fits(bundle: dict[str, float], res: dict[str, float]) -> bool:
    return all(res.get(k, 0.0) + _EPS >= v for k, v in bundle.items() if v > 0)


def _copies(bundle: dict[str, float], res: dict[str, float]) -> int:
    """How many copies of ``bundle`` one node with ``res`` holds."""
    need = [(k, v) for k, v in bundle.items() if v > 0]
    if not need:
        return _UNBOUNDED
    return min(int((res.get(k, 0.0) + _EPS) // v) for k, v in need)


def _sum(bundles: Sequence[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _spread_matching(bundles: Sequence[dict[str, float]], nodes: Sequence[dict[str, float]]) -> int:
    """Most bundles placed one per node (bipartite matching, Kuhn's augmenting paths)."""
    owner: dict[int, int] = {}  # node -> bundle

    def place(b: int, seen: set[int]) -> bool:
        for n, res in enumerate(nodes):
            if n not in seen and _fits(bundles[b], res):
                seen.add(n)
                if n not in owner or place(owner[n], seen):
                    owner[n] = b
                    return True
        return False

    return sum(place(b, set()) for b in range(len(bundles)))


def unplaceable(bundles: Sequence[dict[str, float]], strategy: str, nodes: Sequence[dict[str, float]],
                where: str = "on the nodes") -> str:
    """Why ``bundles`` cannot be placed with ``strategy`` on nodes with these resources; "" if they can.

    Exact for identical bundles (every ActorGroup); for mixed bundles under PACK / SPREAD only the
    necessary conditions are checked (each bundle fits some node, the cluster-wide sums), so a "" there
    may still not pack. PACK and SPREAD are soft: any node may take any number of bundles.
    """
    if not bundles:
        return ""
    for b in {tuple(sorted(b.items())): b for b in bundles}.values():
        if not any(_fits(b, res) for res in nodes):
            return f"one bundle {_fmt_bundle(b)} is bigger than any node"
    need = _sum(bundles)
    for k, v in need.items():
        have = sum(res.get(k, 0.0) for res in nodes)
        if v > have + _EPS:
            return f"{_num(v)} {k} asked in all, {_num(have)} {k} {where} together"
    n = len(bundles)
    identical = all(b == bundles[0] for b in bundles)
    if strategy == "STRICT_PACK":
        if not any(_fits(need, res) for res in nodes):
            return f"STRICT_PACK puts all bundles ({_fmt_bundle(need)}) on one node and no node holds that"
    elif strategy == "STRICT_SPREAD":
        placed = _spread_matching(bundles, nodes)
        if placed < n:
            return f"STRICT_SPREAD puts each bundle on its own node and only {placed} node(s) can take one"
    elif identical:
        held = sum(min(_copies(bundles[0], res), n) for res in nodes)
        if held < n:
            return f"the nodes hold at most {held} x {_fmt_bundle(bundles[0])} (bundles do not split across nodes)"
    return ""


def check_placement(bundles: Sequence[dict[str, float]], strategy: str, nodes: Sequence[NodeCapacity]
                    ) -> PlacementCheck:
    why_never = unplaceable(bundles, strategy, [n.total for n in nodes])
    if why_never:
        return PlacementCheck(False, False, why_never)
    why_not_now = unplaceable(bundles, strategy, [n.free for n in nodes], "free on the nodes")
    return PlacementCheck(True, not why_not_now, why_not_now)


def describe_nodes(nodes: Sequence[NodeCapacity], keys: Sequence[str] = ()) -> str:
    """One line per node: total and free CPU, GPU and any other resource in ``keys``."""
    names = list(dict.fromkeys(["CPU", "GPU", *keys]))
    lines = [f"  {n.name}: " + ", ".join(f"{k} {_num(n.total.get(k, 0.0))} total / {_num(n.free.get(k, 0.0))} free"
                                        for k in names) for n in nodes]
    return "\n".join(lines) or "  (no alive nodes)"


_READONLY_TYPE = re.compile(r"node_[0-9a-f]{16,}")


def autoscaler_from_node_types(node_types: Sequence[str]) -> bool | None:
    """Ray's monitor without an autoscaling config (``ray start --head``, ``ray.init()``, a test Cluster)
    runs a read-only provider that names every node's type ``node_<node id>``; a real autoscaler (cluster
    YAML, KubeRay) uses the configured type names. None: no node types known yet."""
    if not node_types:
        return None
    return not all(_READONLY_TYPE.fullmatch(t) for t in node_types)


# gcs address -> (can autoscale, why); written by raylhf.driver.cluster.init_ray for the cluster it joined
_CLUSTER_MODE: dict[str, tuple[bool | None, str]] = {}


def _gcs_address() -> str:
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:  # not connected
        return ""


def set_cluster_autoscaling(mode: str, started_here: bool) -> None:
    """Record ``ray.autoscaling`` (auto | on | off) for the cluster this driver just joined or started."""
    if mode == "on":
        decision: tuple[bool | None, str] = (True, "ray.autoscaling=on")
    elif mode == "off":
        decision = (False, "ray.autoscaling=off")
    elif started_here:
        decision = (False, "a local cluster started by raylhf, ray.autoscaling=auto")
    else:
        decision = (None, "ray.autoscaling=auto")
    _CLUSTER_MODE[_gcs_address()] = decision


def detect_autoscaler() -> tuple[bool | None, str]:
    """Ask the cluster's monitor (autoscaler v1 status in the GCS KV, or v2 cluster status) for its node
    types; see ``autoscaler_from_node_types``. (None, why) when that cannot be read (yet)."""
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        if is_autoscaler_v2(fetch_from_server=True):
            from ray.autoscaler.v2.sdk import get_cluster_status

            status = get_cluster_status(_gcs_address())
            types = [n.ray_node_type_name for n in [*status.active_nodes, *status.idle_nodes]]
        else:
            from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
            from ray.experimental.internal_kv import _internal_kv_get

            raw = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
            report = (json.loads(raw).get("autoscaler_report") or {}) if raw else {}
            types = [*(report.get("active_nodes") or {}), *(report.get("idle_nodes") or {})]
    except Exception as e:  # an older or newer Ray, a monitor that has not reported yet
        return None, f"autoscaler state unreadable ({type(e).__name__}: {e})"
    found = autoscaler_from_node_types(types)
    if found is None:
        return None, "ray.autoscaling=auto; the cluster's monitor has not reported node types yet"
    if found:
        return True, f"ray.autoscaling=auto; Ray reports an autoscaler (node types {sorted(set(types))})"
    return False, "ray.autoscaling=auto; Ray reports no autoscaler (a fixed set of nodes)"


def can_autoscale() -> tuple[bool | None, str]:
    """(True/False, why) when known; (None, why) when unknown, which callers treat as 'may grow'."""
    recorded, why = _CLUSTER_MODE.get(_gcs_address(), (None, ""))
    if recorded is not None:
        return recorded, why
    return detect_autoscaler()


def cluster_nodes() -> list[NodeCapacity]:
    """Every alive node's total and free resources, from the GCS."""
    from ray._private import state

    totals = state.total_resources_per_node()
    free = state.available_resources_per_node()
    addr = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n.get("Alive")}
    return [NodeCapacity(f"{addr.get(nid, '?')} ({nid[:8]})", dict(t), dict(free.get(nid, {})))
            for nid, t in sorted(totals.items())]


def _held_by_others(own: Any) -> str:
    try:
        table = ray.util.placement_group_table()
    except Exception:
        return ""
    own_id = own.id.hex()
    held = []
    for pg_id, info in table.items():
        if pg_id == own_id or info.get("state") != "CREATED":
            continue
        bundles = list((info.get("bundles") or {}).values())
        label = info.get("name") or pg_id[:8]
        held.append(f"{label} ({len(bundles)} x {_fmt_bundle(bundles[0]) if bundles else '{}'})")
    return ", ".join(held)


def _fields_hint(name: str, strategy: str, sizing: str | None) -> str:
    fields = sizing or f"the {name} group's worker count / CPUs / GPUs in the config"
    loosen = f", use a looser ray.placement_strategy than {strategy}" if strategy.startswith("STRICT") else ""
    return f"Lower {fields}{loosen}, or give the cluster more (ray.num_cpus for a local cluster, more nodes)"


def _wait_ready(pg: Any, name: str, bundles: list[dict[str, float]], strategy: str, timeout_s: float,
                sizing: str | None = None) -> None:
    """Wait for a placement group; raise WorkerError at once when it can never fit a cluster that cannot
    grow, else after ``timeout_s``. Says what it waits for at once and every PROGRESS_S."""
    asked = f"{len(bundles)} x {_fmt_bundle(bundles[0])} (strategy {strategy})"
    start = time.monotonic()
    deadline, last_print = start + timeout_s, -PROGRESS_S
    ready = pg.ready()
    grows: bool | None = None
    why_grows = ""
    while True:
        left = deadline - time.monotonic()
        done, _ = ray.wait([ready], timeout=max(0.05, min(POLL_S, left)))
        if done:
            ray.get(ready)
            return
        nodes = cluster_nodes()
        check = check_placement(bundles, strategy, nodes)
        if grows is None:
            grows, why_grows = can_autoscale()
        table = describe_nodes(nodes, list(bundles[0]))
        if not check.possible and grows is False:
            raise WorkerError(
                f"{name}: cannot place {asked}: {check.reason}. The cluster cannot add nodes ({why_grows}), so "
                f"waiting would not help. Nodes:\n{table}\n{_fields_hint(name, strategy, sizing)}; "
                "set ray.autoscaling=on if nodes will join."
            )
        if not check.possible:
            state = f"more than the nodes have ({check.reason}); waiting for the autoscaler ({why_grows})"
        elif not check.fits_free:
            state = (f"fits the nodes but not what is free now ({check.reason}); held by placement groups: "
                     f"{_held_by_others(pg) or 'none listed'} (they may free it)")
        else:
            state = "fits what is free; waiting for Ray to place it"
        now = time.monotonic()
        if now >= deadline:
            raise WorkerError(
                f"{name}: could not reserve {asked} within {timeout_s:.0f}s: {state}. Nodes:\n{table}\n"
                f"{_fields_hint(name, strategy, sizing)}"
            )
        if now - last_print >= PROGRESS_S:
            last_print = now
            print(f"[raylhf] {name}: waiting for {asked} ({now - start:.0f}s of {timeout_s:.0f}s): {state}. "
                  f"Nodes:\n{table}", flush=True)


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
    ) -> None:
        """``sizing``: the config fields that size this group, named when it cannot be placed.
        ``call_timeout_s``: the watchdog's limit on every call (``runtime.phase_timeout_s``); None or 0: none.
        ``env``: environment variables of the run for its actors (e.g. ``actor_omp_env``)."""
        self.name, self.num_ranks, self.env = name, num_ranks, dict(env or {})
        self.call_timeout_s = call_timeout_s or None
        bundles = [{"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {})} for _ in range(num_ranks)]
        self.pg: Any = placement_group(bundles, strategy=strategy, name=f"raylhf-{name}")
        self.actors: list[Any] = []
        try:
            _wait_ready(self.pg, name, bundles, strategy, start_timeout_s, sizing)
            self._start(worker_cls, num_ranks, num_cpus, num_gpus, init_kwargs, runtime_env, start_timeout_s)
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
        self._opts: dict[str, Any] = dict(num_cpus=num_cpus, num_gpus=num_gpus, max_concurrency=1)

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
        self.call("setup", timeout_s=start_timeout_s)

    def _new_actor(self, rank: int, master: tuple[str, int]) -> Any:
        strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=rank)
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

    def _wait(self, refs: list[ray.ObjectRef], method: str, timeout_s: float | None, actors: list[Any]) -> list[Any]:
        """wait_all under the watchdog: the limit is ``timeout_s`` when given (0: none), else the group's
        ``call_timeout_s``; on expiry PhaseTimeoutError with the silent ranks' stacks."""
        if timeout_s is None:
            limit, field = self.call_timeout_s, watchdog.TIMEOUT_FIELD
        else:
            limit, field = timeout_s or None, "this call's timeout_s"
        return wait_all(refs, f"{self.name}.{method}", limit, actors, field)

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

    def shutdown(self) -> None:
        for a in self.actors:
            with contextlib.suppress(Exception):  # already dead
                ray.kill(a, no_restart=True)
        self.actors = []
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None
