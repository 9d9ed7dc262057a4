"""actors.common.init_distributed on the CPU: gloo, without DeepSpeed's JIT-built shared-memory op."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import torch, torch.distributed as dist
from actors.common import init_distributed
init_distributed(on_gpu=False)
import deepspeed.comm.comm as c
assert c.cdb.shm_comm_op is None, c.cdb.shm_comm_op
t = torch.ones(3)
dist.all_reduce(t)  # training's collectives still work (gloo)
print("ok", dist.get_backend(), t.tolist())
"""


@pytest.mark.timeout(300)
def test_cpu_init_skips_the_shm_op_build_and_gloo_still_reduces(tmp_path: Path) -> None:
    """Without the skip, DeepSpeed compiles deepspeed_shm_comm with g++ into TORCH_EXTENSIONS_DIR on every fresh
    virtualenv (~27 s here), an op training never uses."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ext = tmp_path / "torch_extensions"
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(ext), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "ok gloo [1.0, 1.0, 1.0]" in proc.stdout
    assert not (ext / "deepspeed_shm_comm").exists()  # nothing was compiled
