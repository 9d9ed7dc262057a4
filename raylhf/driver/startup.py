"""Worker start-up: every actor group of a run (policy, rollout, reference, reward), placed and sized from
the config, and the CPUs they need. See docs/architecture.md."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from actors.group import ActorGroup
from actors.policy import PolicyWorker
from actors.reference import ReferenceWorker
from actors.reserve import SharedPlacement
from actors.reward import RewardWorker
from actors.rollout import RolloutWorker, import_vllm
from raylhf.config.sections import PolicyConfig, RewardConfig, RolloutConfig


class HostedReference:
    """The reference group when the reference model lives on the policy's ranks (``reference.placement: policy``,
    ``actors/reference_host.py``): its ``logprobs`` are the policy ranks' ``reference_logprobs`` (each rank its share
    of the batch); it shuts down with the policy."""

    name = "reference"
    METHODS: ClassVar[dict[str, str]] = {"logprobs": "reference_logprobs"}

    def __init__(self, policy: ActorGroup) -> None:
        self.policy = policy

    @property
    def actors(self) -> list[Any]:
        return self.policy.actors

    def call_split(self, method: str, data: Any, *args: Any, **kwargs: Any) -> list[Any]:
        return self.policy.call_split(self.METHODS.get(method, method), data, *args, **kwargs)

    def call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return self.policy.call(self.METHODS.get(method, method), *args, **kwargs)

    def shutdown(self) -> None:
        """Nothing of its own: the policy group's shutdown ends it."""


@dataclass
class Workers:
    policy: ActorGroup | None = None
    rollout: ActorGroup | None = None
    reference: ActorGroup | HostedReference | None = None
    reward: ActorGroup | None = None
    critic: ActorGroup | None = None
    shared: SharedPlacement | None = None  # rollout.placement=colocate: the bundles policy and engines share

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
        if self.shared is not None:
            self.shared.remove()


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
    with_reference = (algo if algo is not None else cfg.grpo).kl_coef > 0
    own_reference = with_reference and cfg.reference.placement == "own"
    colocated = cfg.rollout.placement == "colocate"
    try:
        if colocated:
            gpus = gpus_per_rank(None) > 0
            w.shared = SharedPlacement(colocated_bundles(cfg, own_reference, gpus), strategy, "colocated",
                                       sizing="policy.num_workers, policy.num_cpus_per_worker, "
                                       "rollout.num_cpus_per_engine or reference.num_cpus")
            w.policy = start_policy(cfg.policy, model_path, cfg.model.dtype, optimizer_steps, cfg.seed, strategy,
                                    trust, call_timeout_s=limit, worker_cls=policy_cls, extra=policy_extra, env=env,
                                    shared=w.shared, num_gpus=POLICY_SHARE if gpus else 0.0)
            w.rollout = start_rollout(cfg.rollout, model_path, cfg.model.dtype, max_model_len, strategy, trust,
                                      call_timeout_s=limit, env=env, wait=False, shared=w.shared,
                                      visible_gpus=engine_gpus(w.policy, cfg.rollout.tensor_parallel_size)
                                      if gpus else None)
        else:
            # the engines start first and come up while the other groups start (a vLLM engine takes the longest)
            w.rollout = start_rollout(cfg.rollout, model_path, cfg.model.dtype, max_model_len, strategy, trust,
                                      call_timeout_s=limit, env=env, wait=False)
            w.policy = start_policy(cfg.policy, model_path, cfg.model.dtype, optimizer_steps, cfg.seed, strategy,
                                    trust, call_timeout_s=limit, worker_cls=policy_cls, extra=policy_extra, env=env)
        if with_reference and not own_reference:  # reference.placement=policy: on the policy's ranks
            w.policy.call("setup_reference", cfg.policy.reference_config(cfg.reference))
            w.reference = HostedReference(w.policy)
        elif with_reference:
            share = {"shared": w.shared, "bundle_index": [0]} if colocated else {}
            gpu = (REFERENCE_SHARE if gpus_per_rank(None) else 0.0) if colocated else gpus_per_rank(None)
            w.reference = ActorGroup(
                ReferenceWorker, 1, name="reference", num_cpus=cfg.reference.num_cpus, num_gpus=gpu, **share,
                init_kwargs=dict(model_path=model_path, dtype=cfg.model.dtype, trust_remote_code=trust,
                                 reference=cfg.policy.reference_config(cfg.reference)),
                sizing="reference.num_cpus", call_timeout_s=limit, env=env,
            )
        w.reward = start_reward(cfg.reward, reward_context(cfg), extra_functions(cfg), call_timeout_s=limit, env=env)
        w.rollout.ready()
    except BaseException:
        w.shutdown()
        raise
    return w


# Ray's accounting of one colocated bundle's GPU (what each actor asks for; the memory is vLLM's
# gpu_memory_utilization and what the policy allocates): policy rank, engine shard, and the reference in bundle 0
POLICY_SHARE, ENGINE_SHARE, REFERENCE_SHARE = 0.4, 0.4, 0.2


def colocated_bundles(cfg: Any, with_reference: bool, gpus: bool) -> list[dict[str, float]]:
    """Bundle i of a colocated run: policy rank i, engine i / tensor_parallel_size's CPUs in its first bundle, the
    reference's in bundle 0; one GPU each where the cluster has GPUs."""
    tp = cfg.rollout.tensor_parallel_size
    bundles = []
    for i in range(cfg.policy.num_workers):
        cpus = cfg.policy.num_cpus_per_worker
        cpus += cfg.rollout.num_cpus_per_engine if i % tp == 0 else 0.0
        cpus += cfg.reference.num_cpus if with_reference and i == 0 else 0.0
        bundles.append({"CPU": cpus, **({"GPU": 1.0} if gpus else {})})
    return bundles


def engine_gpus(policy: ActorGroup, tp: int) -> list[list[str]]:
    """Each colocated engine's CUDA devices: the GPUs of the policy ranks whose bundles its tensor-parallel shards
    share (Ray assigns an actor one GPU of its bundle; the engine's worker processes need all ``tp``)."""
    where = policy.call("gpu_ids")
    out = []
    for first in range(0, len(where), tp):
        nodes = {node for node, _ in where[first:first + tp]}
        if len(nodes) > 1:
            raise ValueError(f"rollout.placement=colocate: engine {first // tp}'s {tp} tensor-parallel shards landed "
                             f"on {len(nodes)} nodes (policy ranks {first}..{first + tp - 1}); an engine runs on one "
                             "node: set ray.placement_strategy=STRICT_PACK or use rollout.tensor_parallel_size=1")
        out.append([gpu for _, ids in where[first:first + tp] for gpu in ids])
    return out


def required_cpus(cfg: Any, groups: Iterable[str]) -> float:
    """Logical CPUs that the actor ``groups`` of a run take (names: policy, critic, rollout, reference, reward,
    teacher), from their config sections; a local Ray cluster is sized to hold them all."""
    need = {
        "policy": lambda: cfg.policy.num_workers * cfg.policy.num_cpus_per_worker,
        "critic": lambda: cfg.critic.num_workers * cfg.critic.num_cpus_per_worker,
        "rollout": lambda: cfg.rollout.num_engines * cfg.rollout.num_cpus_per_engine,
        "reference": lambda: cfg.reference.num_cpus if cfg.reference.placement == "own" else 0.0,
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
    """Run facts every reward may ask for by keyword (``max_new_tokens``; ``sandbox``: the ``sandbox:`` section,
    for the code_tests reward)."""
    out: dict[str, Any] = {"max_new_tokens": cfg.rollout.max_new_tokens}
    if getattr(cfg, "sandbox", None) is not None:
        out["sandbox"] = cfg.sandbox.model_dump()
    return out


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
                 group_name: str = "policy", env: dict[str, str] | None = None,
                 shared: SharedPlacement | None = None, num_gpus: float | None = None) -> ActorGroup:
    """The policy group; ``call_timeout_s``: the watchdog's limit on each call (runtime.phase_timeout_s).
    ``worker_cls``: a PolicyWorker subclass (a trainer's own loss), given ``extra`` keyword arguments.
    ``shared``: rank i in bundle i of a colocated placement group, asking for ``num_gpus`` of its GPU."""

    if shared is not None and cfg.num_gpus_per_worker is not None:
        num_gpus = cfg.num_gpus_per_worker
    return ActorGroup(
        worker_cls or PolicyWorker, cfg.num_workers, name=group_name, num_cpus=cfg.num_cpus_per_worker,
        num_gpus=gpus_per_rank(cfg.num_gpus_per_worker) if num_gpus is None else num_gpus, strategy=strategy,
        shared=shared,
        init_kwargs=dict(model_path=model_path, policy=cfg.model_dump(), dtype=dtype, total_steps=total_steps,
                         seed=seed, trust_remote_code=trust_remote_code, **(extra or {})),
        sizing=f"{group_name}.num_workers, {group_name}.num_cpus_per_worker or {group_name}.num_gpus_per_worker",
        call_timeout_s=call_timeout_s, env=env,
    )


ENGINE_CALLS = 64  # Ray calls one engine serves at once (each a thread waiting on its requests)


def start_rollout(cfg: RolloutConfig, model_path: str, dtype: str, max_model_len: int, strategy: str,
                  trust_remote_code: bool = False, call_timeout_s: float | None = None,
                  env: dict[str, str] | None = None, wait: bool = True, shared: SharedPlacement | None = None,
                  visible_gpus: list[list[str]] | None = None) -> ActorGroup:
    """The rollout engines; ``call_timeout_s``: the watchdog's limit on each call (runtime.phase_timeout_s);
    ``wait=False``: return before the engines are up (``group.ready()`` waits). ``shared``: engine j in bundle
    ``j x tensor_parallel_size`` of a colocated placement group, its shards on the GPUs ``visible_gpus[j]``."""

    import_vllm()  # fail on the driver with the install hint, before reserving anything
    tp = cfg.tensor_parallel_size
    if shared is not None:
        gpus = ENGINE_SHARE if gpus_per_rank(None) else 0.0
        place: dict[str, Any] = {"shared": shared, "bundle_index": [j * tp for j in range(cfg.num_engines)]}
    else:
        gpus, place = gpus_per_rank(None) * tp, {}
    return ActorGroup(
        RolloutWorker, cfg.num_engines, name="rollout", num_cpus=cfg.num_cpus_per_engine,
        num_gpus=gpus, strategy=strategy, **place,
        init_kwargs=dict(model_path=model_path, rollout={**cfg.model_dump(), "visible_gpus": visible_gpus},
                         dtype=dtype, max_model_len=max_model_len, trust_remote_code=trust_remote_code),
        sizing="rollout.num_engines, rollout.num_cpus_per_engine, rollout.tensor_parallel_size or rollout.resources",
        call_timeout_s=call_timeout_s, env=env, max_concurrency=ENGINE_CALLS, wait=wait, resources=cfg.resources,
    )
