"""Weight sync, policy -> every rollout engine, verified: the ``sync`` phase of an online step.

Two paths (``rollout.weight_sync``), both ending in vLLM's weight-transfer API with raylhf's transfer engine
(``actors/vllm_transfer.py``):

* ``collective`` (what ``auto`` picks): the policy's rank 0 and every engine worker form a gloo group of their own
  (``actors/weight_wire.py``), formed at the first sync and again after an engine was replaced or a sync failed;
  rank 0 broadcasts the weights in buckets while the engines receive them. Every collective has a timeout
  (``runtime.phase_timeout_s``, else 600 s): a dead peer ends the sync with gloo's connection error, a silent one
  with the timeout, and the driver names the rank (``actors/calls.py``), never hangs: a
  :class:`WeightSyncFailed` names the group's addresses and the field to raise.
* ``object_store``: rank 0 puts the buckets in the Ray object store; each engine writes them to /dev/shm and
  loads them.

Then, unless ``rollout.verify_sync: false``, the sync is verified: every engine's per-tensor checksums of what it
received against the sender's manifest (naming a tensor skipped, reshaped or corrupted on the way), and the
engines' log-probs of a fixed probe sequence against the policy's (a load that did not take shows as a gap above
``rollout.verify_tol``). Either mismatch is a :class:`WeightSyncError`. Metrics: ``sync/verified``,
``sync/probe_gap``, ``sync/gbytes``, ``time/sync_transfer``, ``time/sync_verify``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from actors.calls import PhaseTimeoutError, WorkerError, wait_all
from actors.group import ActorGroup
from raylhf.core.errors import RunError
from raylhf.core.weights import compare_checksums, probe_gap, probe_ids

DEFAULT_TIMEOUT_S = 600.0


class WeightSyncError(RunError):
    """A weight sync that did not deliver the policy's weights (a tensor missing or different, or the probe's
    log-probs apart)."""


class WeightSyncFailed(WorkerError, RunError):
    """The transfer of a weight sync failed on a rank: an error it raised (gloo's timeout or connection error when a
    peer cannot be reached: a link down, a firewall between the nodes, a socket on the wrong interface) or its death.
    Keeps the rank's ``what`` / ``rank`` / ``died``, so a dead engine is still restarted (``recovery.py``)."""

    def __init__(self, e: WorkerError, path: str, timeout_s: float, peers: str) -> None:
        cause = _last_line(str(e))
        self.summary = (f"weight sync failed ({path} path): {e.what or 'a rank'} on rank {e.rank} ({cause}). "
                        f"{peers}Each collective of the sync waits rollout.sync_timeout_s (default: runtime.phase_timeout_s; "
                        f"{timeout_s:g}s here). "
                        "A peer that cannot be reached ends the sync like this: check the network between the "
                        "nodes and the interface each actor logged for its collectives (GLOO_SOCKET_IFNAME / "
                        "NCCL_SOCKET_IFNAME, docs/cluster.md); if the transfer is only slow, raise "
                        "rollout.sync_timeout_s")
        super().__init__(f"{self.summary}\n{e}", e.what, e.rank, e.died)

    def cli_message(self) -> str:
        return self.summary


def _last_line(message: str) -> str:
    """The remote error's own line (the last non-empty one of a Ray traceback)."""
    lines = [x.strip() for x in message.strip().splitlines() if x.strip()]
    return lines[-1][:300] if lines else "no message"


@dataclass
class SyncOptions:
    bucket_mb: int = 64
    mode: str = "auto"  # auto | collective | object_store
    verify: bool = True
    tol: float = 1e-3
    timeout_s: float | None = None  # rollout.sync_timeout_s; None: the rollout group's call timeout

    @classmethod
    def of(cls, cfg: Any) -> SyncOptions:
        """From a run config (its ``rollout`` and ``model`` sections)."""
        ro = cfg.rollout
        tol = ro.verify_tol
        if tol is None:  # fp32 engines match the policy to ~1e-6; half precision to a few 1e-2
            tol = 1e-3 if str(cfg.model.dtype) in ("auto", "float32", "fp32") and not torch.cuda.is_available() \
                else 0.1
        return cls(ro.sync_bucket_mb, ro.weight_sync, ro.verify_sync, float(tol), ro.sync_timeout_s)

    def kwargs(self) -> dict[str, Any]:
        return {"bucket_mb": self.bucket_mb, "mode": self.mode, "verify_sync": self.verify, "tol": self.tol,
                "timeout_s": self.timeout_s}


@dataclass
class Channel:
    """The weight path between one policy group and one engine group (kept on the engine group)."""

    members: tuple[Any, ...]  # the actors it was formed with
    mode: str
    probe: list[int]
    formed: bool = False
    version: int = 0
    peers: str = ""  # where the collective group's members are, for errors ("" before it is formed)


def _channel(policy: ActorGroup, rollout: ActorGroup, mode: str) -> Channel:
    members = (*policy.actors, *rollout.actors)
    path = "object_store" if mode == "object_store" else "collective"
    ch: Channel | None = getattr(rollout, "weight_channel", None)
    if ch is None or ch.members != members or ch.mode != path:
        vocab = int(policy.call_rank0("vocab_size"))
        ch = Channel(members, path, probe_ids(vocab), version=ch.version if ch is not None else 0)
        rollout.weight_channel = ch  # type: ignore[attr-defined]
    return ch


def _wait(groups: list[tuple[ActorGroup, str, list[Any]]], timeout_s: float) -> list[list[Any]]:
    """Wait for calls on several groups at once (fail fast); a failure names its group, method and rank."""
    refs, where, actors = [], [], []
    for group, method, group_refs in groups:
        refs += group_refs
        where += [(group.name, method, r) for r in range(len(group_refs))]
        actors += group.actors[: len(group_refs)]
    try:
        flat = wait_all(refs, "weight sync", timeout_s, actors, "runtime.phase_timeout_s")
    except WorkerError as e:
        if e.rank is None or e.rank >= len(where):
            raise
        name, method, rank = where[e.rank]
        raise WorkerError(str(e).replace(f"weight sync failed on rank {e.rank}", f"{name}.{method} failed on "
                                         f"{name} rank {rank}"), f"{name}.{method}", rank, e.died) from e
    out, i = [], 0
    for _, _, group_refs in groups:
        out.append(flat[i:i + len(group_refs)])
        i += len(group_refs)
    return out


def _form(policy: ActorGroup, rollout: ActorGroup, ch: Channel, timeout_s: float) -> None:
    tp = int((getattr(rollout, "_init_kwargs", {}).get("rollout") or {}).get("tensor_parallel_size", 1))
    host, port = policy.call_rank0("weight_group_address")
    engines = [str(addr) for addr, _ in rollout.call("node_address")]
    ch.peers = (f"The gloo group's store is on the policy's rank 0 at {host}:{port}; the engines are at "
                f"{', '.join(engines)}. ")
    world = 1 + tp * len(rollout.actors)
    _wait([(policy, "join_weight_group", [a.join_weight_group.remote(host, port, world, timeout_s)
                                          for a in policy.actors]),
           (rollout, "init_transfer", [a.init_transfer.remote(host, port, 1 + i * tp, world, timeout_s)
                                       for i, a in enumerate(rollout.actors)])], timeout_s + 30)


def _transfer(policy: ActorGroup, rollout: ActorGroup, ch: Channel, bucket_mb: int, timeout_s: float
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    version = ch.version + 1
    if ch.mode == "object_store":
        refs, sent = policy.call("publish_weights", bucket_mb)[0]
        return sent, rollout.call("load_weights", refs, version)
    if not ch.formed:
        _form(policy, rollout, ch, timeout_s)
        ch.formed = True
    sent, received = _wait([(policy, "send_weights", [a.send_weights.remote(bucket_mb) for a in policy.actors]),
                            (rollout, "receive_weights", [a.receive_weights.remote(version)
                                                          for a in rollout.actors])], timeout_s + 30)
    return sent[0], received


def verify(policy: ActorGroup, rollout: ActorGroup, probe: list[int], sent: dict[str, Any],
           received: list[dict[str, Any]], tol: float) -> float:
    """Raise WeightSyncError unless every engine received exactly what was sent and its probe log-probs are within
    ``tol`` of the policy's; returns the largest probe gap."""
    for i, got in enumerate(received):
        problems = compare_checksums(sent, got, f"engine {i}")
        if problems:
            more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
            raise WeightSyncError(f"weight sync did not deliver the policy's weights to rollout engine {i}: "
                                  + "; ".join(problems[:8]) + more)
    ours, theirs = _wait([(policy, "logprobs", [a.logprobs.remote([torch.tensor(probe)], 1.0) for a in policy.actors]),
                          (rollout, "score_logprobs", [a.score_logprobs.remote([probe]) for a in rollout.actors])],
                         rollout.call_timeout_s or DEFAULT_TIMEOUT_S)  # both sides at once
    mine = [float(x) for x in ours[0][0]]
    gaps = [probe_gap(mine, lp[0]) for lp in theirs]
    worst = max(gaps)
    if not worst <= tol:
        engine = gaps.index(worst)
        raise WeightSyncError(f"after the weight sync, rollout engine {engine}'s log-probs of the probe sequence are "
                              f"up to {worst:.3g} from the policy's (rollout.verify_tol={tol:g}): the engine did "
                              "not take the weights it received (a load that did nothing, or a name it mapped to "
                              "another parameter)")
    return worst


def sync_weights(policy: ActorGroup, rollout: ActorGroup, bucket_mb: int = 64, *, mode: str = "auto",
                 verify_sync: bool = True, tol: float = 1e-3,
                 after_transfer: Callable[[], None] | None = None, timeout_s: float | None = None
                 ) -> dict[str, float]:
    """Policy -> every engine (see the module doc); returns the ``sync/*`` metrics. ``after_transfer``: runs
    between the transfer and the verification (a colocated engine wakes its KV cache there, ``colocate.py``).
    ``timeout_s``: each collective's limit (``rollout.sync_timeout_s``); None: the rollout group's call timeout
    (``runtime.phase_timeout_s``), else DEFAULT_TIMEOUT_S."""
    ch = _channel(policy, rollout, mode)
    timeout_s = timeout_s or rollout.call_timeout_s or DEFAULT_TIMEOUT_S
    t0 = time.perf_counter()
    try:
        sent, received = _transfer(policy, rollout, ch, bucket_mb, timeout_s)
    except WorkerError as e:
        ch.formed = False  # the group may be half-used: form a new one next time
        if isinstance(e, PhaseTimeoutError):  # the watchdog's report already names the sync and the field
            raise
        raise WeightSyncFailed(e, ch.mode, timeout_s, ch.peers) from e
    except BaseException:
        ch.formed = False
        raise
    ch.version += 1
    seconds = time.perf_counter() - t0
    gbytes = sum(_nbytes(dtype, shape) for dtype, shape, _ in sent.values()) / 1e9
    out = {"time/sync_transfer": seconds, "sync/gbytes": gbytes}
    if after_transfer is not None:
        after_transfer()
    if verify_sync:
        t1 = time.perf_counter()
        out["sync/probe_gap"] = verify(policy, rollout, ch.probe, sent, received, tol)
        out["time/sync_verify"] = time.perf_counter() - t1
        out["sync/verified"] = 1.0
    return out


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n * torch.empty(0, dtype=getattr(torch, dtype)).element_size()
