"""Worker start-up: every actor group of a run (policy, rollout, reference, reward), placed and sized from
the config, and the CPUs they need. See docs/architecture.md."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from actors.group import ActorGroup
from actors.policy import PolicyWorker
from actors.reference import ReferenceWorker
from actors.reward import RewardWorker
from actors.rollout import RolloutWorker, import_vllm
from raylhf.config.sections import PolicyConfig, RewardConfig, RolloutConfig


@dataclass
class Workers:
    policy: ActorGroup | None = None
    rollout: ActorGroup | None = None
    reference: ActorGroup | None = None
    reward: ActorGroup | None = None
    critic: ActorGroup | None = None

    def groups(self) -> dict[str, ActorGroup]:
        named = {"policy": self.policy, "rollout": self.rollout, "reference": self.reference, "reward": self.reward,
                 "critic": self.critic}
        return {k: g for k, g in named.items() if g is not None}

    def placement(self) -> dict[str, list[str]]:
        """Each group's node ids, rank by rank."""
        return {k: g.call("node_id") for k, g in self.groups().items()}

    def shutdown(self) -> None:
        for g in self.groups().values():
            g.shutdown()


def start_workers(cfg: Any, model_path: str, optimizer_steps: int, max_model_len: int, algo: Any = None,
                  policy_cls: type | None = None, policy_extra: dict[str, Any] | None = None,
                  env: dict[str, str] | None = None) -> Workers:
    """Every actor group of an RL run (policy, rollout, reference when the algorithm section ``algo``, default
    ``cfg.grpo``, has kl_coef > 0, reward); ``env``: environment variables for all their actors.

    If one group fails to start, the groups already up are shut down before the error propagates.
    """

    w = Workers()
    strategy, trust = cfg.ray.placement_strategy, cfg.model.trust_remote_code
    limit = cfg.runtime.phase_timeout_s or None  # the watchdog's limit on every phase
    try:
        # the engines start first and come up while the other groups start (a vLLM engine takes the longest)
        w.rollout = start_rollout(cfg.rollout, model_path, cfg.model.dtype, max_model_len, strategy, trust,
                                  call_timeout_s=limit, env=env, wait=False)
        w.policy = start_policy(cfg.policy, model_path, cfg.model.dtype, optimizer_steps, cfg.seed, strategy, trust,
                                call_timeout_s=limit, worker_cls=policy_cls, extra=policy_extra, env=env)
        if (algo if algo is not None else cfg.grpo).kl_coef > 0:
            w.reference = ActorGroup(
                ReferenceWorker, 1, name="reference", num_cpus=cfg.reference.num_cpus, num_gpus=gpus_per_rank(None),
                init_kwargs=dict(model_path=model_path, dtype=cfg.model.dtype, trust_remote_code=trust,
                                 reference={**cfg.reference.model_dump(), "packing": cfg.policy.packing}),
                sizing="reference.num_cpus", call_timeout_s=limit, env=env,
            )
        w.reward = start_reward(cfg.reward, reward_context(cfg), extra_functions(cfg), call_timeout_s=limit, env=env)
        w.rollout.ready()
    except BaseException:
        w.shutdown()
        raise
    return w


def required_cpus(cfg: Any, groups: Iterable[str]) -> float:
    """Logical CPUs that the actor ``groups`` of a run take (names: policy, critic, rollout, reference, reward,
    teacher), from their config sections; a local Ray cluster is sized to hold them all."""
    need = {
        "policy": lambda: cfg.policy.num_workers * cfg.policy.num_cpus_per_worker,
        "critic": lambda: cfg.critic.num_workers * cfg.critic.num_cpus_per_worker,
        "rollout": lambda: cfg.rollout.num_engines * cfg.rollout.num_cpus_per_engine,
        "reference": lambda: cfg.reference.num_cpus,
        "reward": lambda: cfg.reward.num_workers * cfg.reward.num_cpus,
        "teacher": lambda: cfg.teacher.num_cpus,
    }
    wanted = set(groups)
    unknown = wanted - set(need)
    if unknown:
        raise ValueError(f"unknown actor groups {sorted(unknown)}; known: {list(need)}")
    total = 0.0
    for name, cpus in need.items():  # a fixed order: the same sum whatever order the groups come in
        if name in wanted:
            total += cpus()
    return total


def extra_functions(cfg: Any) -> list[dict[str, Any]]:
    """Rewards implied by the algorithm config: ``grpo.overlong=penalty`` adds the soft overlong reward."""
    g = getattr(cfg, "grpo", None)
    if g is not None and g.overlong == "penalty":
        return [{"name": "soft_overlong", "kwargs": {"buffer": g.overlong_buffer, "penalty": g.overlong_penalty}}]
    return []


def reward_context(cfg: Any) -> dict[str, Any]:
    """Run facts every reward may ask for by keyword (``max_new_tokens``)."""
    return {"max_new_tokens": cfg.rollout.max_new_tokens}


def start_reward(cfg: RewardConfig, context: dict[str, Any], extra: list[dict[str, Any]] | None = None,
                 call_timeout_s: float | None = None, env: dict[str, str] | None = None) -> ActorGroup:
    """The reward group; ``call_timeout_s``: the watchdog's limit on each call (runtime.phase_timeout_s)."""

    # tokens named by reward.remote[].token_env travel from the driver's environment to the reward actors
    # (never through the config or a log line); a variable set on the workers themselves wins
    secrets = {r.token_env: os.environ[r.token_env] for r in cfg.remote if r.token_env and r.token_env in os.environ}
    return ActorGroup(
        RewardWorker, cfg.num_workers, name="reward", num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
        init_kwargs=dict(functions=[f.model_dump() for f in cfg.functions] + list(extra or []),
                         remote=[r.model_dump() for r in cfg.remote], models=[m.model_dump() for m in cfg.models],
                         plugins=list(cfg.plugins), context=context, secrets=secrets),
        sizing="reward.num_workers, reward.num_cpus or reward.num_gpus", call_timeout_s=call_timeout_s, env=env,
    )


def gpus_per_rank(requested: float | None) -> float:
    import ray

    if requested is not None:
        return requested
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def start_policy(cfg: PolicyConfig, model_path: str, dtype: str, total_steps: int, seed: int, strategy: str,
                 trust_remote_code: bool = False, call_timeout_s: float | None = None,
                 worker_cls: type | None = None, extra: dict[str, Any] | None = None,
                 group_name: str = "policy", env: dict[str, str] | None = None) -> ActorGroup:
    """The policy group; ``call_timeout_s``: the watchdog's limit on each call (runtime.phase_timeout_s).
    ``worker_cls``: a PolicyWorker subclass (a trainer's own loss), given ``extra`` keyword arguments."""

    return ActorGroup(
        worker_cls or PolicyWorker, cfg.num_workers, name=group_name, num_cpus=cfg.num_cpus_per_worker,
        num_gpus=gpus_per_rank(cfg.num_gpus_per_worker), strategy=strategy,
        init_kwargs=dict(model_path=model_path, policy=cfg.model_dump(), dtype=dtype, total_steps=total_steps,
                         seed=seed, trust_remote_code=trust_remote_code, **(extra or {})),
        sizing=f"{group_name}.num_workers, {group_name}.num_cpus_per_worker or {group_name}.num_gpus_per_worker",
        call_timeout_s=call_timeout_s, env=env,
    )


ENGINE_CALLS = 64  # Ray calls one engine serves at once (each a thread waiting on its requests)


def start_rollout(cfg: RolloutConfig, model_path: str, dtype: str, max_model_len: int, strategy: str,
                  trust_remote_code: bool = False, call_timeout_s: float | None = None,
                  env: dict[str, str] | None = None, wait: bool = True) -> ActorGroup:
    """The rollout engines; ``call_timeout_s``: the watchdog's limit on each call (runtime.phase_timeout_s);
    ``wait=False``: return before the engines are up (``group.ready()`` waits)."""

    import_vllm()  # fail on the driver with the install hint, before reserving anything
    return ActorGroup(
        RolloutWorker, cfg.num_engines, name="rollout", num_cpus=cfg.num_cpus_per_engine,
        num_gpus=gpus_per_rank(None) * cfg.tensor_parallel_size, strategy=strategy,
        init_kwargs=dict(model_path=model_path, rollout=cfg.model_dump(), dtype=dtype, max_model_len=max_model_len,
                         trust_remote_code=trust_remote_code),
        sizing="rollout.num_engines, rollout.num_cpus_per_engine or rollout.tensor_parallel_size",
        call_timeout_s=call_timeout_s, env=env, max_concurrency=ENGINE_CALLS, wait=wait,
    )
