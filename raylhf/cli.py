"""`raylhf` console script: `raylhf <subcommand> [config args]` runs `python -m raylhf.<subcommand>`."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "grpo": ("raylhf.grpo", "GRPO-family RL (vLLM rollouts, DeepSpeed policy, rewards)"),
    "ppo": ("raylhf.ppo", "PPO with a critic (GAE), or the grpo / rloo / reinforce++ estimators without one"),
    "online-dpo": ("raylhf.online_dpo", "online DPO: sample, score, pair best vs worst, DPO update, sync"),
    "sft": ("raylhf.sft", "supervised fine-tuning (the single-actor case)"),
    "dpo": ("raylhf.dpo", "DPO family on preference pairs (sigmoid, ipo, hinge, cdpo, simpo, orpo, cpo)"),
    "kto": ("raylhf.kto", "KTO on unpaired replies labelled desirable / undesirable"),
    "serve-reward": ("raylhf.serve_reward", "serve reward functions / a reward model over HTTP"),
    "sample": ("raylhf.sample", "best-of-N sampling: N completions per prompt, scored; writes preference pairs"),
    "rm": ("raylhf.rm", "reward-model training (Bradley-Terry on preference pairs)"),
    "gkd": ("raylhf.gkd", "on-policy distillation (GKD): student samples, teacher distributions, generalized JSD"),
    "check-plugin": ("raylhf.check_plugin", "load a plugin file and check each entry against its interface"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:14s} {doc}" for name, (_, doc) in SUBCOMMANDS.items())
    return (
        "usage: raylhf <subcommand> [--config FILE ...] [--section.field VALUE ...] [--dry-run] [--help]\n\n"
        f"subcommands:\n{rows}\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), end="")
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"raylhf: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr, end="")
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
