"""The command line: `raylhf <verb> [config args]` and `python -m raylhf.<verb>`, from one table.

Each verb names its config class, the run on the user's data and, for the trainers, the embedded demo that runs
when the config names no data files (``data.train_files`` empty): that choice is made here, nowhere else. The
run and the demo are ``"module:function"`` strings imported only after the arguments parsed, so ``--help`` and
``--dry-run`` load neither torch nor ray. A run-ending error a user can act on (``raylhf.core.errors.RunError``)
prints as one line and exits 2. Layer: CLI, see docs/architecture.md.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from raylhf.config import (
    DPOConfig,
    GKDConfig,
    GRPOConfig,
    KTOConfig,
    OnlineDPOConfig,
    PPOConfig,
    RMConfig,
    SampleConfig,
    SFTConfig,
    cli_entry,
)
from raylhf.config.encoders import EmbeddingConfig, GenerativeRerankerConfig, RerankerConfig, SeqClsConfig
from raylhf.config.serve_reward import ServeRewardConfig
from raylhf.core.errors import RunError


@dataclass(frozen=True)
class Command:
    prog: str  # the entry module, `python -m <prog>`; also the prefix of its error lines
    config: type | None  # the config class; None: ``run`` parses its own argv (check-plugin)
    run: str  # "module:function": run(cfg) -> exit code, on the config's data
    demo: str | None  # "module:function": demo(cfg) -> exit code, when the config names no data files
    doc: str
    evaluate: str | None = None  # "module:function": evaluate(cfg, train, heldout) -> metrics (`raylhf eval <verb>`)


# the one command table (its strings are the only hidden imports the project keeps: they keep --help light)
COMMANDS: dict[str, Command] = {
    "grpo": Command("raylhf.grpo", GRPOConfig, "raylhf.trainers.grpo:cli", "raylhf.demo.online:grpo_demo",
                    "GRPO-family RL (vLLM rollouts, DeepSpeed policy, rewards)"),
    "ppo": Command("raylhf.ppo", PPOConfig, "raylhf.trainers.ppo:cli", "raylhf.demo.online:ppo_demo",
                   "PPO with a critic (GAE), or the grpo / rloo / reinforce++ estimators without one"),
    "online-dpo": Command("raylhf.online_dpo", OnlineDPOConfig, "raylhf.trainers.online_dpo:cli",
                          "raylhf.demo.online:online_dpo_demo",
                          "online DPO: sample, score, pair best vs worst, DPO update, sync"),
    "sft": Command("raylhf.sft", SFTConfig, "raylhf.trainers.sft:cli", "raylhf.demo.offline:sft_demo",
                   "supervised fine-tuning (the single-actor case)", "raylhf.trainers.sft:evaluate"),
    "dpo": Command("raylhf.dpo", DPOConfig, "raylhf.trainers.dpo:cli", "raylhf.demo.offline:dpo_demo",
                   "DPO family on preference pairs (sigmoid, ipo, hinge, cdpo, simpo, orpo, cpo)"),
    "kto": Command("raylhf.kto", KTOConfig, "raylhf.trainers.kto:cli", "raylhf.demo.offline:kto_demo",
                   "KTO on unpaired replies labelled desirable / undesirable"),
    "serve-reward": Command("raylhf.serve_reward", ServeRewardConfig, "raylhf.tools.serve_reward:cli", None,
                            "serve reward functions / a reward model over HTTP"),
    "sample": Command("raylhf.sample", SampleConfig, "raylhf.tools.sample:cli", "raylhf.demo.offline:sample_demo",
                      "best-of-N sampling: N completions per prompt, scored; writes preference pairs"),
    "rm": Command("raylhf.rm", RMConfig, "raylhf.trainers.rm:cli", "raylhf.demo.offline:rm_demo",
                  "reward-model training (Bradley-Terry on preference pairs)", "raylhf.trainers.rm:evaluate"),
    "gkd": Command("raylhf.gkd", GKDConfig, "raylhf.trainers.gkd:cli", "raylhf.demo.offline:gkd_demo",
                   "on-policy distillation (GKD): student samples, teacher distributions, generalized JSD"),
    "seq_cls": Command("raylhf.seq_cls", SeqClsConfig, "raylhf.trainers.seq_cls:cli", "raylhf.demo.encoders:seq_cls_demo",
                       "sequence classification (a head on the last token; single / multi label, regression)",
                       "raylhf.trainers.seq_cls:evaluate"),
    "embedding": Command("raylhf.embedding", EmbeddingConfig, "raylhf.trainers.embedding:cli",
                         "raylhf.demo.encoders:embedding_demo",
                         "text embeddings (infonce, cosine_similarity, contrastive, online_contrastive)",
                         "raylhf.trainers.embedding:evaluate"),
    "reranker": Command("raylhf.reranker", RerankerConfig, "raylhf.trainers.reranker:cli",
                        "raylhf.demo.encoders:reranker_demo", "cross-encoder reranker (pointwise / listwise)",
                        "raylhf.trainers.reranker:evaluate"),
    "generative_reranker": Command("raylhf.generative_reranker", GenerativeRerankerConfig,
                                   "raylhf.trainers.reranker:cli_generative",
                                   "raylhf.demo.encoders:generative_reranker_demo",
                                   "reranker on a causal LM's yes / no log-odds (pointwise / listwise)",
                                   "raylhf.trainers.reranker:evaluate"),
    "eval": Command("raylhf.evaluate", None, "raylhf.evaluate:main", None,
                    "a checkpoint's held-out metrics, as its trainer computes them: raylhf eval <trainer> ..."),
    "infer": Command("raylhf.infer", None, "raylhf.tools.infer:main", None,
                     "batch inference on a checkpoint: JSONL in / out (vLLM replies, or an encoder's scores / vectors)"),
    "export": Command("raylhf.export", None, "raylhf.tools.export:main", None,
                      "merge a LoRA / IA3 run into a standalone HF checkpoint; check vLLM's log-probs on it"),
    "sandbox-run": Command("raylhf.sandbox_run", None, "raylhf.tools.sandbox_run:main", None,
                           "run a program in the code sandbox; prints one JSON line (status, output, time)"),
    "check-plugin": Command("raylhf.check_plugin", None, "raylhf.plugins.check:main", None,
                            "load a plugin file and check each entry against its interface"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:20s} {cmd.doc}" for name, cmd in COMMANDS.items())
    return (
        "usage: raylhf <subcommand> [--config FILE ...] [--section.field VALUE ...] [--dry-run] [--help]\n\n"
        f"subcommands:\n{rows}\n"
    )


def _target(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def run_command(verb: str, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` into the verb's config (``--help`` / ``--dry-run`` end here), then run it on the config's
    data or, with none, the embedded demo."""
    cmd = COMMANDS[verb]
    args = list(sys.argv[1:] if argv is None else argv)
    if cmd.config is None:
        return int(_target(cmd.run)(args) or 0)
    cfg = cli_entry(cmd.config, args, cmd.prog)
    if cfg is None:
        return 0
    target = cmd.demo if cmd.demo is not None and not cfg.data.train_files else cmd.run  # no data: the demo
    try:
        return int(_target(target)(cfg) or 0)
    except RunError as e:
        print(f"{cmd.prog}: error: {e.cli_message()}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), end="")
        return 0
    name, rest = args[0], args[1:]
    for alias in (name.replace("-", "_"), name.replace("_", "-")):  # seq-cls = seq_cls, online_dpo = online-dpo
        name = alias if name not in COMMANDS and alias in COMMANDS else name
    if name not in COMMANDS:
        print(f"raylhf: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr, end="")
        return 2
    return run_command(name, rest)


if __name__ == "__main__":
    raise SystemExit(main())
