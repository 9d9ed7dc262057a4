"""Fault injection for the recovery tests: make a worker process die for real at a chosen call.

``RAYLHF_FAULT_INJECT="<group>.<method>@<n>:<marker file>"`` (several separated by ``;``): the ``n``-th
call of ``method`` in a ``group`` actor process ends that process with ``os._exit(1)`` in the middle
of the call, once: the marker file is created first, and a fault whose marker exists never fires again
(so the restarted actor lives). Unset, this costs one dictionary lookup per call.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "RAYLHF_FAULT_INJECT"
_calls: dict[str, int] = {}


def maybe_die(group: str, method: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    key = f"{group}.{method}"
    _calls[key] = _calls.get(key, 0) + 1
    for item in spec.split(";"):
        target, _, rest = item.strip().partition("@")
        count, _, marker = rest.partition(":")
        if target != key or not count.isdigit() or int(count) != _calls[key] or not marker:
            continue
        try:
            Path(marker).open("x").close()  # fires once, across restarts
        except FileExistsError:
            continue
        print(f"[fault] {key} call {_calls[key]}: exiting the process ({ENV})", flush=True)
        os._exit(1)


SKIP_ENV = "RAYLHF_FAULT_SYNC_SKIP"


def sync_skipped() -> set[str]:
    """``RAYLHF_FAULT_SYNC_SKIP="name[,name]"``: tensors a weight sync's sender leaves off the wire while still
    listing them in its manifest (a sync that silently drops a tensor, for the verification tests)."""
    return {n.strip() for n in os.environ.get(SKIP_ENV, "").split(",") if n.strip()}
