"""The network interface of a node's Ray address, for the sockets of the collectives (gloo, NCCL).

A process group between nodes picks its interface by itself unless told: gloo resolves the machine's hostname
(inside a container or a network namespace that is often an address the node does not have, and gloo then falls
back to the loopback address, which a peer on another node cannot reach), NCCL takes the first interface that is
up (often docker0 or a private one). Either way the collective hangs until its timeout. Ray already knows which
address other nodes reach this node at: the node's Ray address (``ray.util.get_node_ip_address()``). Before a
process group forms, :func:`configure_socket_ifname` finds the local interface that carries that address and sets
``GLOO_SOCKET_IFNAME`` and ``NCCL_SOCKET_IFNAME`` to it; a variable the user set (in the node's or the job's
environment) wins. Each actor logs once which applies. Processes a Ray actor starts (vLLM's engine core and its
tensor-parallel workers) inherit the variables. Where the address is on no local interface (a NAT'd address
given to ``ray start --node-ip-address``), nothing is set and the libraries choose, with a line saying so.

Used by DeepSpeed's start-up on the policy / critic ranks (``actors/common.py: init_distributed``) and by the
weight-sync group (``actors/weight_wire.py: join_group``, the policy's rank 0 and every engine worker). See
docs/cluster.md ("Several nodes").
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

GLOO_VAR = "GLOO_SOCKET_IFNAME"
NCCL_VAR = "NCCL_SOCKET_IFNAME"
IFNAME_VARS = (GLOO_VAR, NCCL_VAR)
# set beside them when raylhf derived them ("<ifname> <address>"), so that a child process (a vLLM worker) that
# inherits them knows they are not the user's
DERIVED_VAR = "RAYLHF_SOCKET_IFNAME_FROM"

_SIOCGIFADDR = 0x8915  # linux/sockios.h

_logged: set[str] = set()  # the choices this process logged already (once per actor)


def _normal(address: str) -> str:
    """``address`` in canonical form (IPv6 zone dropped); unchanged when it is not an IP address."""
    try:
        return str(ipaddress.ip_address(address.split("%", 1)[0]))
    except ValueError:
        return address


def _ioctl_addresses() -> dict[str, list[str]]:
    """IPv4 address of each interface through ``SIOCGIFADDR`` (the primary address only; Linux)."""
    import fcntl

    out: dict[str, list[str]] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            req = struct.pack("256s", name.encode()[:15])
            try:
                res = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)
            except OSError:  # no IPv4 address
                continue
            out.setdefault(name, []).append(socket.inet_ntoa(res[20:24]))
    return out


def local_addresses() -> dict[str, list[str]]:
    """Every local interface's IP addresses (IPv4 and IPv6), ``{name: [address, ...]}``.

    From ``getifaddrs(3)`` through psutil (installed with DeepSpeed), which lists secondary addresses too; without
    psutil, the ``SIOCGIFADDR`` ioctl on each interface of ``socket.if_nameindex()`` (primary IPv4 addresses)."""
    try:
        import psutil
    except ImportError:
        return _ioctl_addresses() if sys.platform.startswith("linux") else {}
    out: dict[str, list[str]] = {}
    for name, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out.setdefault(name, []).append(_normal(a.address))
    return out


def interface_of(address: str, addresses: dict[str, list[str]] | None = None) -> str | None:
    """The local interface that carries ``address``; None when no interface has it. ``addresses``: what
    :func:`local_addresses` returns (given in tests)."""
    want = _normal(address)
    table = local_addresses() if addresses is None else addresses
    for name, addrs in table.items():
        if want in {_normal(a) for a in addrs}:
            return name
    return None


def route_source(peer: str) -> str | None:
    """The local address this host would use to reach ``peer`` (a UDP ``connect`` sends nothing); None when there
    is no route."""
    family = socket.AF_INET6 if ":" in peer else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((peer, 9))
            return str(s.getsockname()[0])
    except OSError:
        return None


def node_address() -> str | None:
    """The node's Ray address, inside a Ray worker or driver; None in a process without Ray (a vLLM worker)."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    return str(ray.util.get_node_ip_address())


@dataclass(frozen=True)
class Choice:
    """What :func:`choose` decided: the value of each variable (None: left unset) and the line to log."""

    values: dict[str, str | None]
    ifname: str | None  # the derived interface, None when none was derived
    message: str


def _kv(var: str, value: str) -> str:
    return f"{var}={value!r}" if value.startswith("=") else f"{var}={value}"


def _describe(values: dict[str, str], inherited: str) -> str:
    """``VAR=value (whose)`` for each variable set: the user's, or raylhf's (``inherited``: DERIVED_VAR's value)."""
    ifname, _, address = inherited.partition(" ")
    parts = []
    for var, value in values.items():
        ours = bool(ifname) and value in (ifname, f"={ifname}")
        parts.append(_kv(var, value) + " (" + (f"derived from the node address {address}" if ours
                                            else "the user's setting") + ")")
    return ", ".join(parts)


def choose(address: str | None, environ: MutableMapping[str, str],
           lookup: Callable[[str], str | None] = interface_of) -> Choice:
    """Decide the socket interface variables for a node whose Ray address is ``address`` (pure given
    ``lookup``: address -> interface name or None). A variable set in ``environ`` is kept."""
    user = {v: environ[v] for v in IFNAME_VARS if environ.get(v)}
    inherited = environ.get(DERIVED_VAR, "")
    override = f"{GLOO_VAR} / {NCCL_VAR} set in the job's or the nodes' environment win"
    if len(user) == len(IFNAME_VARS):
        return Choice(dict(user), None, "collectives use " + _describe(user, inherited))
    kept = f"; {_describe(user, inherited)}" if user else ""
    if not address:
        return Choice({v: user.get(v) for v in IFNAME_VARS}, None,
                      f"no node address known here: gloo / NCCL choose their interface themselves{kept} ({override})")
    ifname = lookup(address)
    if ifname is None:
        return Choice({v: user.get(v) for v in IFNAME_VARS}, None,
                      f"the node address {address} is on no local interface (a NAT'd --node-ip-address?): gloo / "
                      f"NCCL choose their interface themselves{kept}; if a collective between nodes hangs, set "
                      f"{GLOO_VAR} / {NCCL_VAR} on every node")
    values: dict[str, str | None] = {GLOO_VAR: user.get(GLOO_VAR, ifname),
                                     NCCL_VAR: user.get(NCCL_VAR, f"={ifname}")}  # "=": exact name, not a prefix
    derived = ", ".join(_kv(k, str(values[k])) for k in IFNAME_VARS if k not in user)
    return Choice(values, ifname, f"collectives use interface {ifname} (it carries the node address {address}): "
                  f"{derived}{kept} ({override})")


def configure_socket_ifname(who: str, address: str | None = None, peer: str | None = None,
                            environ: MutableMapping[str, str] | None = None) -> str | None:
    """Set ``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME`` (those not set already) to the interface of this node's
    Ray address and log the choice once per process; returns the interface in use, None when left to the libraries.

    ``address``: the node's address (default: the Ray node address of this process). ``peer``: where Ray is not
    initialised (a vLLM worker process), the address of the group's host: the local address routing to it stands
    in for the node address. ``who``: the group being formed, for the log line."""
    env = os.environ if environ is None else environ
    if address is None and not all(env.get(v) for v in IFNAME_VARS):
        address = node_address()
        if address is None and peer:
            address = route_source(peer)
    choice = choose(address, env)
    for var, value in choice.values.items():
        if value is not None and env.get(var) != value:
            env[var] = value
    if choice.ifname is not None and DERIVED_VAR not in env:
        env[DERIVED_VAR] = f"{choice.ifname} {address}"
    key = repr(sorted(choice.values.items())) if any(choice.values.values()) else choice.message
    if key not in _logged:  # once per process, unless the choice changed
        _logged.add(key)
        print(f"[raylhf] {who}: {choice.message}", flush=True)
    return choice.values.get(GLOO_VAR)
