"""HTTPS end to end: `python -m raylhf.serve_reward` serving with a self-signed certificate for 127.0.0.1
(made by the openssl command at test time) and a bearer token, and RemoteReward against it: trusting the
certificate through ca_file, failing fast (no retries) under default verification, verify_tls: false, and
the wrong scheme either way."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rewards.base import RewardBatch
from rewards.protocol import RemoteRewardError
from rewards.remote import RemoteReward

try:  # tests/reward_suite as a package (with __init__.py) or, without one, on sys.path as pytest's rootdir
    from .test_remote import TOKEN, TOKEN_ENV, Proc, launch_all, run, stop_all
    from .test_server import client
except ImportError:
    from test_remote import TOKEN, TOKEN_ENV, Proc, launch_all, run, stop_all  # type: ignore
    from test_server import client  # type: ignore

OPENSSL = shutil.which("openssl") or ("/usr/bin/openssl" if os.access("/usr/bin/openssl", os.X_OK) else None)
pytestmark = pytest.mark.skipif(
    OPENSSL is None, reason="the openssl command (makes the test's self-signed certificate) is not installed")

READY = r"\[serve-reward\] listening on https://127\.0\.0\.1:(\d+) \(auth: on\)"

# the built-in accuracy reward (what `raylhf serve-reward` serves by default): "it is 4" for label 4 -> 1.0
BATCH = RewardBatch(prompts=["2+2?", "2+2?"], completions=["it is 4", "5"], columns={"solution": ["4", "4"]})
SCORES = [1.0, 0.0]


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """(certificate, key): a self-signed RSA certificate for IP 127.0.0.1, valid one day."""
    cert, key = directory / f"{name}.crt.pem", directory / f"{name}.key.pem"
    assert OPENSSL is not None
    cmd = [OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
           "-addext", "subjectAltName=IP:127.0.0.1",
           "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",  # for strict checks
           "-addext", "extendedKeyUsage=serverAuth", "-keyout", str(key), "-out", str(cert)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{' '.join(cmd)} failed: {done.stderr}"
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("https")
    cert, key = self_signed(d, "server")
    other, _ = self_signed(d, "other")  # a certificate the server does not use
    return {"cert": cert, "key": key, "other": other}


@pytest.fixture(scope="module")
def server(certs: dict[str, Path]) -> Iterator[Proc]:
    cmd = [sys.executable, "-m", "raylhf.serve_reward", "--port", "0",
           "--ssl_certfile", str(certs["cert"]), "--ssl_keyfile", str(certs["key"])]
    (proc,) = launch_all([cmd], READY, env={**os.environ, "RAYLHF_REWARD_TOKEN": TOKEN}, timeout=30)
    yield proc
    stop_all([proc])
    assert all(TOKEN not in line for line in proc.lines)


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return TOKEN_ENV


def url(proc: Proc, scheme: str = "https", path: str = "/score") -> str:
    return f"{scheme}://127.0.0.1:{proc.port}{path}"


def counters(rm: RemoteReward) -> tuple[float, float, float]:
    m = rm.metrics()
    return m["requests"], m["retries"], m["failed_items"]


# ------------------------------------------------------------------------------------------------- the client


@pytest.mark.parametrize(("path", "protocol"), [("/score", "raylhf"), ("/get_reward", "openrlhf")])
def test_ca_file_trusts_the_self_signed_certificate(server: Proc, certs: dict[str, Path], token: str,
                                                     path: str, protocol: str) -> None:
    rm = client(url(server, path=path), protocol=protocol, token_env=token, ca_file=str(certs["cert"]))
    assert run(rm, BATCH) == SCORES
    assert counters(rm) == (1, 0, 0)


def test_default_verification_fails_fast_and_is_not_retried(server: Proc, token: str) -> None:
    rm = RemoteReward({"name": "srv", "url": url(server), "token_env": token, "retries": 3,
                       "timeout_s": 10.0})  # the default backoff
    t = time.perf_counter()
    with pytest.raises(RemoteRewardError) as e:
        run(rm, BATCH)
    assert time.perf_counter() - t < 5  # default backoff: retries would take about 0.5 + 1 + 2 s more
    msg = str(e.value)
    assert f"remote reward 'srv' ({url(server)})" in msg  # the endpoint
    assert "certificate failed verification" in msg and "not retried" in msg
    assert "set ca_file" in msg.lower() and "verify_tls: false" in msg
    assert counters(rm) == (1, 0, 2)  # requests, retries, failed_items
    assert TOKEN not in msg


def test_ca_file_that_does_not_trust_the_server(server: Proc, certs: dict[str, Path], token: str) -> None:
    rm = client(url(server), token_env=token, ca_file=str(certs["other"]), retries=3)
    with pytest.raises(RemoteRewardError, match=r"certificate failed verification.*ca_file '.*other.*' does "
                                                r"not trust it.*verify_tls: false"):
        run(rm, BATCH)
    assert counters(rm) == (1, 0, 2)


def test_certificate_failure_with_on_failure_skip(server: Proc, token: str) -> None:
    rm = client(url(server), token_env=token, retries=3, on_failure="skip")
    assert run(rm, BATCH) == [None, None]
    assert counters(rm) == (1, 0, 2)


def test_verify_tls_false(server: Proc, certs: dict[str, Path], token: str) -> None:
    rm = client(url(server), token_env=token, verify_tls=False)
    assert run(rm, BATCH) == SCORES
    assert counters(rm) == (1, 0, 0)
    rm = client(url(server), token_env=token, verify_tls=False, ca_file=str(certs["other"]))  # ca_file unused
    assert run(rm, BATCH) == SCORES


def test_token_still_required_over_https(server: Proc, certs: dict[str, Path]) -> None:
    with pytest.raises(RemoteRewardError, match="HTTP 401: no bearer token was sent"):
        run(client(url(server), ca_file=str(certs["cert"])), BATCH)


def test_plain_http_to_the_tls_port(server: Proc, token: str) -> None:
    rm = client(url(server, scheme="http"), token_env=token, retries=1)
    with pytest.raises(RemoteRewardError) as e:
        run(rm, BATCH)
    msg = str(e.value)
    assert f"remote reward 'srv' ({url(server, scheme='http')})" in msg
    assert "if the server speaks HTTPS, the url must start with https://" in msg
    assert counters(rm)[2] == 2
    # the server is still fine afterwards
    assert run(client(url(server), token_env=token, verify_tls=False), BATCH) == SCORES


def test_https_to_a_plain_http_server(token: str) -> None:
    """An https:// url on a server speaking plain HTTP: a TLS error saying so, not retried."""
    stop = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.1)

        def answer() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                with conn:
                    conn.settimeout(5)
                    try:
                        conn.recv(4096)
                        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                     b"Connection: close\r\n\r\n")
                    except OSError:
                        pass

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        try:
            rm = client(f"https://127.0.0.1:{listener.getsockname()[1]}/score", token_env=token, retries=3)
            needle = r"TLS error, not retried.*plain HTTP use an http:// url"
            with pytest.raises(RemoteRewardError, match=needle):
                run(rm, BATCH)
            assert counters(rm) == (1, 0, 2)
        finally:
            stop.set()
            thread.join(timeout=5)
    assert not thread.is_alive()


def test_ca_file_missing_or_not_pem(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(RemoteRewardError, match=r"remote reward 'srv': cannot load ca_file '.*nope\.pem' "
                                                r"\(no such file\)"):
        client("https://127.0.0.1:1/score", ca_file=missing)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(RemoteRewardError, match=r"cannot load ca_file .*junk\.pem.*PEM"):
        client("https://127.0.0.1:1/score", ca_file=str(junk))
    client("https://127.0.0.1:1/score", ca_file=missing, verify_tls=False)  # unused: not loaded


# ------------------------------------------------------------------------------------------------- the server


def test_server_tls_config_errors(certs: dict[str, Path], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from raylhf.serve_reward import main

    cert, key = str(certs["cert"]), str(certs["key"])
    for argv, needle in [
        (["--ssl_certfile", cert], "ssl_certfile is set but ssl_keyfile is not"),
        (["--ssl_keyfile", key], "ssl_keyfile is set but ssl_certfile is not"),
        (["--ssl_certfile", str(tmp_path / "none.pem"), "--ssl_keyfile", key],
         f"ssl_certfile '{tmp_path / 'none.pem'}' does not exist"),
        (["--ssl_certfile", cert, "--ssl_keyfile", str(tmp_path)], "ssl_keyfile"),
    ]:
        with pytest.raises(SystemExit) as e:
            main([*argv, "--port", "0"])
        assert e.value.code == 2
        assert needle in capsys.readouterr().err
    # both exist but are not a certificate and its key: refused before the rewards are built
    assert main(["--ssl_certfile", key, "--ssl_keyfile", cert, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "cannot load the TLS certificate (ssl_certfile" in err and "ssl_keyfile" in err
    assert main(["--ssl_certfile", cert, "--ssl_keyfile", key, "--dry-run"]) == 0
    assert f"ssl_certfile: {cert}" in capsys.readouterr().out
