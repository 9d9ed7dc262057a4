"""The collectives' network interface, derived from the node's Ray address (actors/netif.py), and the named error
of a weight sync whose transfer failed (raylhf/driver/weight_sync.py). No Ray: the multi-node run across two
network namespaces is tests/e2e/test_netns_multinode.py."""

from __future__ import annotations

import socket
import sys

import pytest

from actors import netif
from actors.calls import WorkerError
from raylhf.core.errors import RunError
from raylhf.driver.weight_sync import WeightSyncFailed

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="interface names of Linux (lo)")
UNKNOWN = "203.0.113.77"  # TEST-NET-3: on no interface of a test machine


@pytest.fixture(autouse=True)
def _fresh_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netif, "_logged", set())


@linux
def test_the_loopback_address_is_on_lo_and_an_unknown_one_on_none() -> None:
    assert netif.interface_of("127.0.0.1") == "lo"
    assert netif.interface_of(UNKNOWN) is None
    assert "127.0.0.1" in netif._ioctl_addresses()["lo"]  # the fallback without psutil agrees
    assert netif.route_source("127.0.0.1") == "127.0.0.1"


def test_interface_of_reads_every_address_of_every_interface() -> None:
    table = {"lo": ["127.0.0.1", "::1"], "eth0": ["10.0.0.5", "10.0.0.6", "fe80::1"], "veth1": ["10.213.4.2"]}
    assert netif.interface_of("10.0.0.6", table) == "eth0"  # a secondary address
    assert netif.interface_of("10.213.4.2", table) == "veth1"
    assert netif.interface_of("0:0:0:0:0:0:0:1", table) == "lo"  # IPv6 in any spelling
    assert netif.interface_of("fe80::1%eth0", table) == "eth0"  # with a zone
    assert netif.interface_of("10.0.0.7", table) is None


def test_derived_from_the_node_address_and_set_in_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    env: dict[str, str] = {}
    got = netif.configure_socket_ifname("policy", "127.0.0.1", environ=env)
    assert got == "lo"
    assert env[netif.GLOO_VAR] == "lo" and env[netif.NCCL_VAR] == "=lo"  # NCCL: the exact name, not a prefix
    out = capsys.readouterr().out
    assert "interface lo (it carries the node address 127.0.0.1)" in out and "policy" in out
    netif.configure_socket_ifname("weight sync", "127.0.0.1", environ=env)
    assert capsys.readouterr().out == ""  # once per process
    # a child process (a vLLM worker) inherits the variables and says where they came from
    netif._logged.clear()
    assert netif.configure_socket_ifname("engine worker", environ=dict(env)) == "lo"
    assert "GLOO_SOCKET_IFNAME=lo (derived from the node address 127.0.0.1)" in capsys.readouterr().out


def test_a_user_setting_wins(capsys: pytest.CaptureFixture[str]) -> None:
    env = {netif.GLOO_VAR: "eth7", netif.NCCL_VAR: "^docker"}
    assert netif.configure_socket_ifname("policy", "127.0.0.1", environ=env) == "eth7"
    assert env == {netif.GLOO_VAR: "eth7", netif.NCCL_VAR: "^docker"}
    assert "GLOO_SOCKET_IFNAME=eth7 (the user's setting)" in capsys.readouterr().out
    # one variable set: it stays, the other is derived
    env = {netif.NCCL_VAR: "ib0"}
    choice = netif.choose("10.1.2.3", env, lookup=lambda a: "eth1")
    assert choice.values == {netif.GLOO_VAR: "eth1", netif.NCCL_VAR: "ib0"}
    assert "NCCL_SOCKET_IFNAME=ib0 (the user's setting)" in choice.message


def test_an_address_on_no_interface_leaves_the_choice_to_the_libraries_and_says_so(
        capsys: pytest.CaptureFixture[str]) -> None:
    env: dict[str, str] = {}
    assert netif.configure_socket_ifname("policy", UNKNOWN, environ=env) is None
    assert env == {}
    out = capsys.readouterr().out
    assert f"the node address {UNKNOWN} is on no local interface" in out
    assert "set GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME on every node" in out
    choice = netif.choose(None, {}, lookup=lambda a: "never")
    assert choice.ifname is None and "no node address known here" in choice.message


@linux
def test_the_weight_group_forms_on_the_interface_of_the_route_to_its_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside Ray (a vLLM worker process without the actor's variables) the group's host decides."""
    from actors.weight_wire import broadcast, join_group

    for var in (*netif.IFNAME_VARS, netif.DERIVED_VAR):
        monkeypatch.setenv(var, "")  # unset for the code, restored after
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pg = join_group("127.0.0.1", port, 0, 1, 10.0, is_master=True)
    import os

    import torch

    assert os.environ[netif.GLOO_VAR] == "lo"
    t = torch.arange(3)
    broadcast(pg, t)
    assert t.tolist() == [0, 1, 2]


def test_a_failed_transfer_is_named_and_keeps_what_recovery_needs() -> None:
    remote = ("rollout.receive_weights failed on rollout rank 0:\nray::RolloutWorker.receive_weights()\n"
              "  File \"x.py\", line 1\nRuntimeError: [gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting "
              "20000ms for recv operation to complete\n")
    e = WeightSyncFailed(WorkerError(remote, "rollout.receive_weights", 0, died=True), "collective", 20.0,
                         "The gloo group's store is on the policy's rank 0 at 10.213.4.1:41000; the engines are at "
                         "10.213.4.2. ")
    assert isinstance(e, WorkerError) and isinstance(e, RunError)
    assert (e.what, e.rank, e.died, e.group) == ("rollout.receive_weights", 0, True, "rollout")
    line = e.cli_message()
    assert line.startswith("weight sync failed (collective path): rollout.receive_weights on rank 0 (RuntimeError: ")
    assert "Timed out waiting 20000ms" in line and "10.213.4.1:41000" in line and "10.213.4.2" in line
    assert "rollout.sync_timeout_s" in line and "20s here" in line and "GLOO_SOCKET_IFNAME" in line
    assert "\n" not in line and remote.strip() in str(e)  # the full remote traceback stays in the exception


def test_rollout_resources_pin_the_engines_and_need_their_own_bundles() -> None:
    """``rollout.resources`` (custom Ray resources in each engine's bundle) is how the engines go to chosen nodes."""
    from raylhf.config.sections import RolloutConfig

    assert RolloutConfig(resources={"engine_node": 1}).resources == {"engine_node": 1.0}
    assert RolloutConfig().resources == {}
    with pytest.raises(ValueError, match=r"leave rollout\.resources empty"):
        RolloutConfig(resources={"engine_node": 1}, placement="colocate")
