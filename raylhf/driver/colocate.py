"""Colocated placement (``rollout.placement=colocate``): the engines and the policy take turns on the same devices.

One step, as the driver runs it (``OnlineRun`` calls these around its phases; with ``split`` they do nothing):

    generate                      engines awake, the policy's optimizer state in host memory
    rollouts_done()  ->  engines sleep (rollout.sleep_level), the policy's optimizer state comes back
    log-probs, update             the policy (and reference, critic) have the devices
    sync(send)       ->  the policy's optimizer state leaves, engines wake their weights, the weights are sent,
                         engines wake their KV cache, then the sync is verified (the probe needs a KV cache)

Each worker notes what it did (``BaseWorker.record``: wall time and, on CUDA, the device's free memory);
``write_events`` merges the groups' notes into ``<run dir>/colocation.jsonl`` after every step, so the phase order
and the memory freed by each sleep can be read back (the tests check the order from it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors.group import ActorGroup


class Colocation:
    def __init__(self, policy: ActorGroup | None, rollout: ActorGroup | None, placement: str, sleep_level: int,
                 run_dir: Path | None = None) -> None:
        self.policy, self.rollout = policy, rollout
        self.on = placement == "colocate" and policy is not None and rollout is not None
        self.level = sleep_level
        self.asleep = False
        self.path = run_dir / "colocation.jsonl" if run_dir is not None and self.on else None

    def begin(self) -> None:
        """Before the first generation: the policy's optimizer state out of the way (none exists before the first
        update, but a resumed run has it)."""
        if self.on:
            self.policy.call("offload_states")

    def rollouts_done(self) -> None:
        """The step's generation is over: engines to sleep, the policy's optimizer state back."""
        if not self.on or self.asleep:
            return
        self.rollout.call("sleep", self.level)
        self.asleep = True
        self.policy.call("reload_states")

    def sync(self, send: Callable[..., dict[str, float]]) -> dict[str, float]:
        """Run ``send(after_transfer=...)`` (``sync_weights``) with the engines woken around it: weights first, KV
        cache after the transfer (before the verification's probe)."""
        if not self.on:
            return send()
        self.policy.call("offload_states")
        if self.asleep:
            self.rollout.call("wake_up", ["weights"])

        def kv_cache() -> None:
            if self.asleep:
                self.rollout.call("wake_up", ["kv_cache"])
                self.asleep = False

        try:
            return send(after_transfer=kv_cache)
        finally:
            kv_cache()  # a failed transfer still leaves the engines whole for a retry or the shutdown

    def events(self) -> list[dict[str, Any]]:
        """The policy's and engines' event notes since the last call, in time order, each with its group."""
        if not self.on:
            return []
        merged: list[dict[str, Any]] = []
        for name, group in (("policy", self.policy), ("rollout", self.rollout)):
            for per_rank in group.call("event_log"):
                merged += [{"group": name, **e} for e in per_rank]
        return sorted(merged, key=lambda e: e["t"])

    def write_events(self, step: int) -> dict[str, float]:
        """Append the step's events to ``colocation.jsonl``; returns memory metrics where the workers saw CUDA
        (``colocate/gpu_free_gib_asleep``: the engines' device after their sleep, ``.._awake``: after the wake)."""
        if self.path is None:
            return {}
        events = self.events()
        with self.path.open("a") as f:
            for e in events:
                f.write(json.dumps({"step": step, **e}) + "\n")
        out: dict[str, float] = {}
        for e in events:
            if "gpu_free_gib" in e and e["group"] == "rollout" and e["rank"] == 0:
                if e["event"] == "sleep":
                    out["colocate/gpu_free_gib_asleep"] = e["gpu_free_gib"]
                elif e["event"].startswith("wake:") and "kv_cache" in e["event"]:
                    out["colocate/gpu_free_gib_awake"] = e["gpu_free_gib"]
        return out
