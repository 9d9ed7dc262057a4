"""The sections every run shares, declared once: plugins, callbacks, logging, checkpoints, runtime guards, Ray."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from raylhf.config.sections import Section, check_registered
from raylhf.plugins.registry import CALLBACKS


class CallbackConfig(Section):
    shorthand: ClassVar[str | None] = "name"  # `early_stopping` means {name: early_stopping}
    name: str = Field(description="a registered callback (early_stopping, or one from a plugin file)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="its constructor arguments")

    @field_validator("name")
    @classmethod
    def _known_callback(cls, v: str) -> str:
        check_registered(CALLBACKS, v)
        return v


class PluginSections(Section):
    """The top-level fields every entry point shares: the plugin files of the run."""

    plugins: list[str] = Field(
        default_factory=list, description="plugin files (path/to/file.py) or modules, loaded before the run in the "
        "driver and in every actor; --plugins FILE adds one (repeatable); check one with raylhf check-plugin FILE"
    )




ReportTo = Literal["tensorboard", "wandb"]


class LoggingConfig(Section):
    run_dir: str = Field("runs", description="parent folder of run directories")
    run_name: str | None = Field(None, description="run directory name; null: <algo>-<timestamp>")
    report_to: list[ReportTo] = Field(
        default_factory=lambda: ["tensorboard"],
        description="trackers besides stdout and metrics.jsonl: tensorboard, wandb ('raylhf[wandb]' extra)",
    )
    tensorboard: bool | None = Field(
        None, description="deprecated alias of report_to: true adds 'tensorboard', false removes it"
    )
    wandb_project: str = Field("raylhf", description="W&B project (report_to: [wandb])")
    wandb_entity: str | None = Field(None, description="W&B entity (team or user); null: your default entity")
    wandb_tags: list[str] = Field(default_factory=list, description="W&B run tags")
    progress: bool = Field(True, description="show a progress bar when stdout is a terminal")
    log_every: int = Field(1, gt=0, description="print metrics every N steps")
    log_completions: int = Field(
        4, ge=0, description="every training step write N sampled episodes (prompt, completion, rewards, "
        "advantage) to <run_dir>/rollouts/step-<N>.jsonl and the trackers (W&B table, TensorBoard text); 0: none")
    library_warnings: Literal["quiet", "all"] = Field(
        "quiet", description="quiet: library notices that need no action (docs/logging.md lists them) are filtered "
        "at their loggers; all: show them")

    @model_validator(mode="before")
    @classmethod
    def _fold_tensorboard_alias(cls, data: Any) -> Any:
        """Fold the old ``tensorboard: bool`` into ``report_to``; the resolved config shows report_to only."""
        if not isinstance(data, dict) or data.get("tensorboard") is None:
            return data
        data = dict(data)
        flag = data.pop("tensorboard")
        if not isinstance(flag, bool):
            raise ValueError(f"logging.tensorboard must be true or false (got {flag!r}); "
                             "prefer logging.report_to")
        report = data.get("report_to", ["tensorboard"])
        report = [] if report is None else [report] if isinstance(report, str) else report
        if not isinstance(report, (list, tuple)):
            return data  # a wrongly typed report_to: pydantic reports it at logging.report_to
        report = [r for r in report if r != "tensorboard"]
        data["report_to"] = ["tensorboard", *report] if flag else report
        return data

    @model_validator(mode="after")
    def _unique_trackers(self) -> LoggingConfig:
        if len(set(self.report_to)) != len(self.report_to):
            raise ValueError(f"logging.report_to lists a tracker twice: {self.report_to}")
        return self


class CheckpointConfig(Section):
    """Resumable checkpoints (docs/reliability.md): <run dir>/checkpoints/step-<N>/, written atomically."""

    save_every: int = Field(
        0, ge=0,
        description="every N steps save a resumable checkpoint (engine, optimizer, scheduler, data position, "
        "RNG states) with an HF export in it; 0: none (only the final HF export)",
    )
    keep_last: int | None = Field(
        2, ge=1, description="keep the newest N resumable checkpoints, delete older ones; null: keep all",
    )
    resume: str | None = Field(
        None,
        description="auto: continue from the newest complete checkpoint of the run (logging.run_name, else the "
        "newest run of this trainer under logging.run_dir), fresh start if there is none; or a checkpoint dir "
        "(step-<N>) / run dir to continue from. CLI: --resume auto|PATH",
    )
    save_final: bool = Field(True, description="save an HF checkpoint at the end")


class RuntimeConfig(Section):
    """Guards of a running job (docs/reliability.md)."""

    max_bad_steps: int = Field(
        3, gt=0,
        description="stop after this many steps in a row whose update was skipped for a non-finite loss or grad "
        "norm (each batch is saved to <run dir>/bad_batches/step-<N>.pt); a good step resets the count",
    )
    phase_timeout_s: float = Field(
        1800.0, ge=0,
        description="watchdog: a phase (generate, reward, train, sync, ...) whose actors have not all answered "
        "after this many seconds ends the run with a report of those actors and their Python stacks; 0: no limit",
    )
    max_actor_restarts: int = Field(
        3, ge=0,
        description="rollout engines and reward workers that die are restarted (given the current weights) and "
        "the phase is retried, up to this many restarts per run; a policy rank that dies ends the run",
    )
    profile: bool = Field(
        False, description="--profile: write <run dir>/profile/: phases.json + phases.txt (each phase's time per step "
        "and its share) and a torch profiler trace of one policy train step per rank (chrome://tracing / Perfetto)"
    )
    profile_step: int = Field(2, gt=0, description="the step whose policy update is traced (after warm-up)")


class RayConfig(Section):
    address: str | None = Field(None, description="Ray address; null: RAY_ADDRESS or a new local cluster")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of a new local cluster; null: the machine's")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="placement-group strategy for gang-created ranks"
    )
    autoscaling: Literal["auto", "on", "off"] = Field(
        "auto",
        description="can the cluster add nodes? off: a group that cannot fit fails at once; on: wait for "
        "nodes (up to 600 s); auto: off for a local cluster raylhf starts, else on unless Ray runs no autoscaler",
    )


RUN_TAIL = ("logging", "checkpoint", "runtime", "ray", "seed")


class TrainerSections(PluginSections):
    """Top-level fields of every training loop, declared once: plugins, callbacks, logging, checkpoints, the
    runtime guards, the Ray cluster and the seed."""

    callbacks: list[CallbackConfig] = Field(
        default_factory=list, description="callbacks by name (e.g. {name: early_stopping, kwargs: {metric: "
        "eval/loss, patience: 3}}); a plugin file's extra_callbacks are always added"
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    seed: int = Field(1, description="global seed")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Keep the run sections after a trainer's own ones (in --help, --dry-run and config.yaml)."""
        super().__pydantic_init_subclass__(**kwargs)
        fields = dict(cls.__pydantic_fields__)
        tail = [k for k in RUN_TAIL if k in fields]
        order = [k for k in fields if k not in tail] + tail
        if order != list(fields):
            cls.__pydantic_fields__ = {k: fields[k] for k in order}
            cls.model_rebuild(force=True)
