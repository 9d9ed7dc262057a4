"""Tuners: which parameters of the policy train (``policy.tuner.type``), with ms-swift's ``Tuner`` interface.

A tuner is a class with three static methods (ms-swift's names and shapes):

* ``prepare_model(args, model) -> model``: the module that trains (freeze parameters, wrap in adapters, ...);
  ``args`` (:class:`TunerArgs`) holds the ``policy.tuner`` fields as attributes, ``policy.tuner.kwargs``' keys
  as attributes too, and ``model_path`` / ``gradient_checkpointing``;
* ``save_pretrained(model, save_directory, state_dict=None, safe_serialization=True, **kwargs)``: write what
  trains (an adapter, or the whole model);
* ``from_pretrained(model, model_id, **kwargs) -> model``: load what ``save_pretrained`` wrote onto ``model``.

Optional (a raylhf addition): ``export_params(model, gather) -> iterator of (name, tensor)``: the weights that
weight sync and HF exports send, under the base model's parameter names. The default (:func:`export_params`)
merges peft LoRA and IA3 adapters (``W + scaling * B @ A``; ``W * l``) and gives a plain model's parameters as
they are, so vLLM engines load them with no adapter support.

Built-ins: ``full``, ``lora`` (peft LoRA), ``ia3`` (peft IA3), ``freeze`` (freeze parameters by name pattern).
A plugin file adds one with ``extra_tuners = {"name": TunerCls}`` or ``@register_tuner("name")``.

Under DeepSpeed ZeRO-3 parameters are partitioned: the functions that read weights take ``gather``, a
context-manager factory that gathers a list of parameters (:func:`gatherer`); it is a collective, so every
rank must run them over the same parameters. Importing this module does not import torch.
"""

from __future__ import annotations

import inspect
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from raylhf.plugins.registry import TUNERS, PluginCheckError

if TYPE_CHECKING:
    import torch


SIGNATURES = {
    "prepare_model": "prepare_model(args, model) -> model",
    "save_pretrained": "save_pretrained(model, save_directory, state_dict=None, safe_serialization=True, **kwargs)",
    "from_pretrained": "from_pretrained(model, model_id, **kwargs) -> model",
}


def register_tuner(name: str | None = None) -> Callable[[Any], Any]:
    """``@register_tuner("name")`` on a :class:`Tuner` subclass."""
    return TUNERS.decorator(name)


def collect_tuners(table: Any, source: str) -> None:
    """A plugin module's ``extra_tuners`` (name -> Tuner class) into :data:`TUNERS`."""
    TUNERS.register_table(table, source, f"Tuner class (static methods {', '.join(SIGNATURES.values())})")


class TunerArgs:
    """What ``prepare_model(args, model)`` reads: the ``policy.tuner`` fields (``args.lora_rank``, ...), the keys of
    ``policy.tuner.kwargs`` (``args.freeze_parameters``, ...), ``args.model_path`` and
    ``args.gradient_checkpointing``."""

    def __init__(self, tuner: Mapping[str, Any] | None = None, **extra: Any) -> None:
        tuner = dict(tuner or {})
        self.kwargs: dict[str, Any] = dict(tuner.pop("kwargs", None) or {})
        self.type: str = str(tuner.pop("type", "full"))
        self.model_path: str | None = None
        self.gradient_checkpointing = False
        for k, v in {**tuner, **extra}.items():
            setattr(self, k, v)

    def __getattr__(self, name: str) -> Any:  # only for names not set above: policy.tuner.kwargs
        kwargs = self.__dict__.get("kwargs", {})
        if name.startswith("__") or name not in kwargs:
            raise AttributeError(f"the tuner read args.{name}, which is not set: add it to policy.tuner.kwargs "
                                 f"(given: {sorted(kwargs) or 'none'})")
        return kwargs[name]

    def option(self, key: str, default: Any = None) -> Any:
        return self.kwargs.get(key, default)

    def check_kwargs(self, allowed: Iterable[str]) -> None:
        """A built-in tuner's ``policy.tuner.kwargs`` may hold only ``allowed`` keys."""
        unknown = sorted(set(self.kwargs) - set(allowed))
        if unknown:
            raise ValueError(f"policy.tuner.kwargs: {unknown} are not options of tuner {self.type!r}; it takes "
                             f"{sorted(allowed) or 'none'}")


# ------------------------------------------------------------------ the interface and the built-ins

class Tuner:
    """ms-swift's tuner interface; subclass it and register the class (``extra_tuners`` / ``@register_tuner``)."""

    @staticmethod
    def prepare_model(args: Any, model: torch.nn.Module) -> torch.nn.Module:
        raise NotImplementedError

    @staticmethod
    def save_pretrained(model: torch.nn.Module, save_directory: str, state_dict: dict | None = None,
                        safe_serialization: bool = True, **kwargs: Any) -> None:
        raise NotImplementedError

    @staticmethod
    def from_pretrained(model: torch.nn.Module, model_id: str, **kwargs: Any) -> torch.nn.Module:
        raise NotImplementedError


class PeftTuner(Tuner):
    """Save / load a peft model's adapter (``adapter_config.json`` + ``adapter_model.safetensors``)."""

    @staticmethod
    def save_pretrained(model: torch.nn.Module, save_directory: str, state_dict: dict | None = None,
                        safe_serialization: bool = True, **kwargs: Any) -> None:
        model.save_pretrained(save_directory, state_dict=state_dict,  # type: ignore[operator]
                              safe_serialization=safe_serialization, **kwargs)

    @staticmethod
    def from_pretrained(model: torch.nn.Module, model_id: str, **kwargs: Any) -> torch.nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, model_id, **kwargs)


@register_tuner("full")
class FullTuner(Tuner):
    """Every parameter trains; saves a plain HF checkpoint."""

    @staticmethod
    def prepare_model(args: Any, model: torch.nn.Module) -> torch.nn.Module:
        if isinstance(args, TunerArgs):
            args.check_kwargs(())
        return model

    @staticmethod
    def save_pretrained(model: torch.nn.Module, save_directory: str, state_dict: dict | None = None,
                        safe_serialization: bool = True, **kwargs: Any) -> None:
        model.save_pretrained(save_directory, state_dict=state_dict,  # type: ignore[operator]
                              safe_serialization=safe_serialization, **kwargs)

    @staticmethod
    def from_pretrained(model: torch.nn.Module, model_id: str, **kwargs: Any) -> torch.nn.Module:
        dtype = next(model.parameters()).dtype
        return type(model).from_pretrained(model_id, dtype=dtype, **kwargs)  # type: ignore[attr-defined]


@register_tuner("lora")
class LoraTuner(PeftTuner):
    """peft LoRA adapters on a frozen base: ``policy.tuner.lora_rank / lora_alpha / lora_dropout /
    target_modules``; ``policy.tuner.kwargs`` adds other ``peft.LoraConfig`` options (e.g. ``use_rslora``)."""

    @staticmethod
    def prepare_model(args: Any, model: torch.nn.Module) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        extra = dict(getattr(args, "kwargs", {}) or {})
        if extra.get("use_dora"):
            raise ValueError("policy.tuner.kwargs.use_dora is not supported: weight sync merges plain LoRA deltas")
        targets = list(getattr(args, "target_modules", None) or ["all-linear"])
        try:
            config = LoraConfig(
                r=int(getattr(args, "lora_rank", 8)), lora_alpha=float(getattr(args, "lora_alpha", 32.0)),
                lora_dropout=float(getattr(args, "lora_dropout", 0.05)),
                target_modules="all-linear" if targets == ["all-linear"] else targets, task_type="CAUSAL_LM",
                **extra,
            )
        except TypeError as e:
            raise ValueError(f"policy.tuner.kwargs: {e} (options of peft.LoraConfig)") from None
        try:
            return get_peft_model(model, config)
        except ValueError as e:  # e.g. target modules not found in the model
            raise ValueError(f"policy.tuner.target_modules={targets}: {e}") from e

    @staticmethod
    def save_pretrained(model: torch.nn.Module, save_directory: str, state_dict: dict | None = None,
                        safe_serialization: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_embedding_layers", False)
        PeftTuner.save_pretrained(model, save_directory, state_dict, safe_serialization, **kwargs)


@register_tuner("ia3")
class IA3Tuner(PeftTuner):
    """peft IA3: learned scaling vectors on the outputs of ``target_modules`` (the inputs of
    ``feedforward_modules``), both from ``policy.tuner.kwargs``; by default peft's choice for the architecture
    (Llama / Qwen2: ``k_proj``, ``v_proj``, ``down_proj``, feed-forward ``down_proj``)."""

    @staticmethod
    def prepare_model(args: Any, model: torch.nn.Module) -> torch.nn.Module:
        from peft import IA3Config, get_peft_model

        args.check_kwargs(("target_modules", "feedforward_modules"))
        targets, ff = args.option("target_modules"), args.option("feedforward_modules")
        if ff is not None and targets is None:
            raise ValueError("policy.tuner.kwargs.feedforward_modules needs target_modules too (a superset of it)")
        try:
            return get_peft_model(model, IA3Config(target_modules=targets, feedforward_modules=ff,
                                                   task_type="CAUSAL_LM"))
        except ValueError as e:
            raise ValueError(f"policy.tuner.kwargs (ia3: target_modules={targets}, feedforward_modules={ff}): {e}"
                             ) from e


def name_matcher(patterns: Iterable[str], field: str) -> Callable[[str], bool]:
    """``name -> bool``: whether one of ``patterns`` (regexes, searched in the name; a plain substring works)
    matches."""
    try:
        compiled = [re.compile(str(p)) for p in patterns]
    except re.error as e:
        raise ValueError(f"{field}: {e.pattern!r} is not a regex ({e})") from None
    return lambda name: any(rx.search(name) for rx in compiled)


@register_tuner("freeze")
class FreezeTuner(FullTuner):
    """Freeze parameters by name: ``policy.tuner.kwargs.freeze_parameters`` (patterns: regex searched in the
    parameter name, so ``embed_tokens`` or ``layers\\.0\\.`` work; ``.*`` freezes everything) and
    ``trainable_parameters`` (patterns that train even where a freeze pattern matches). Saves the whole model."""

    @staticmethod
    def prepare_model(args: Any, model: torch.nn.Module) -> torch.nn.Module:
        args.check_kwargs(("freeze_parameters", "trainable_parameters"))
        freeze_pats = list(args.option("freeze_parameters") or [])
        train_pats = list(args.option("trainable_parameters") or [])
        if not freeze_pats:
            raise ValueError("policy.tuner.type=freeze needs policy.tuner.kwargs.freeze_parameters: [name patterns] "
                             "(e.g. [embed_tokens, 'layers\\.0\\.'], or ['.*'] with trainable_parameters)")
        names = [n for n, _ in model.named_parameters()]
        for field, pats in (("freeze_parameters", freeze_pats), ("trainable_parameters", train_pats)):
            for pat in pats:
                if not any(name_matcher([pat], f"policy.tuner.kwargs.{field}")(n) for n in names):
                    raise ValueError(f"policy.tuner.kwargs.{field}: {pat!r} matches no parameter (names look like "
                                     f"{', '.join(names[:3])}, ...)")
        frozen = name_matcher(freeze_pats, "policy.tuner.kwargs.freeze_parameters")
        keep = name_matcher(train_pats, "policy.tuner.kwargs.trainable_parameters")
        for name, p in model.named_parameters():
            p.requires_grad_(not frozen(name) or keep(name))
        return model


# ------------------------------------------------------------------ used by the policy worker

def prepare(tuner: Any, args: TunerArgs, model: torch.nn.Module) -> torch.nn.Module:
    """``tuner.prepare_model(args, model)`` with checks: it returns a module with something to train. With
    gradient checkpointing and frozen input embeddings the embeddings' outputs require grad, so the
    checkpointed graph is not cut."""
    import torch

    out = tuner.prepare_model(args, model)
    where = f"policy.tuner.type={args.type!r} ({TUNERS.source(args.type) if args.type in TUNERS else tuner})"
    if not isinstance(out, torch.nn.Module):
        raise TypeError(f"{where}: prepare_model returned {type(out).__name__}; expected the model (a torch module)")
    if not any(p.requires_grad for p in out.parameters()):
        raise ValueError(f"{where} left no parameter trainable")
    if args.gradient_checkpointing and hasattr(out, "enable_input_require_grads"):
        emb = out.get_input_embeddings() if hasattr(out, "get_input_embeddings") else None
        if emb is not None and not any(p.requires_grad for p in emb.parameters()):
            out.enable_input_require_grads()
    return out


def apply_tuner(model: torch.nn.Module, tuner: dict[str, Any] | None, gradient_checkpointing: bool = False
                ) -> torch.nn.Module:
    """``model`` prepared by the tuner ``policy.tuner`` (a dict) names: ``full`` returns it unchanged, ``lora``
    the peft model, ..."""
    args = TunerArgs(tuner, gradient_checkpointing=gradient_checkpointing)
    return prepare(TUNERS.get_entry(args.type), args, model)


def is_peft(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a peft model (adapters on a frozen base)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def is_lora(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a peft model with LoRA adapters."""
    if not is_peft(model):
        return False
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


def trainable_counts(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable parameters, all parameters)``; under ZeRO-3 the full sizes (``ds_numel``), not the shards."""
    def numel(p: Any) -> int:
        return int(getattr(p, "ds_numel", p.numel()))

    params = list(model.parameters())
    return sum(numel(p) for p in params if p.requires_grad), sum(numel(p) for p in params)


# ------------------------------------------------------------------ raylhf check-plugin

def _check_signature(name: str, cls: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    expected = f"tuner {name!r}: expected a static method {SIGNATURES[method]}"
    raw = inspect.getattr_static(cls, method, None)
    if raw is None:
        raise PluginCheckError(f"{expected}; {getattr(cls, '__name__', cls)!r} has no {method}")
    if inspect.isclass(cls) and inspect.isfunction(raw):
        raise PluginCheckError(f"{expected}; {method} is a plain method (add @staticmethod)")
    fn = getattr(cls, method)
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as e:
        raise PluginCheckError(f"{expected}; got {method}{inspect.signature(fn)} ({e})") from None


def _tiny_lm() -> torch.nn.Module:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def check_plugin_entry(name: str, cls: Any) -> str:
    """Check the three static methods' signatures, run ``prepare_model`` on a tiny Llama, save the result with
    ``save_pretrained`` and load it back with ``from_pretrained`` onto a fresh model: same outputs."""
    import torch

    for method, (args, kwargs) in {
        "prepare_model": ((None, None), {}),
        "save_pretrained": ((None, "dir"), {"state_dict": None, "safe_serialization": True}),
        "from_pretrained": ((None, "dir"), {}),
    }.items():
        _check_signature(name, cls, method, args, kwargs)
    model = cls.prepare_model(TunerArgs({"type": name}), _tiny_lm())
    if not isinstance(model, torch.nn.Module):
        raise PluginCheckError(f"tuner {name!r}: {SIGNATURES['prepare_model']}; it returned {type(model).__name__}")
    trainable, total = trainable_counts(model)
    if not trainable:
        raise PluginCheckError(f"tuner {name!r}: prepare_model left no parameter trainable")
    with torch.no_grad():
        for p in model.parameters():  # move what trains, so a save / load that drops it shows
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    ids = torch.arange(1, 9)[None]
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        want = model(input_ids=ids).logits
        cls.save_pretrained(model, tmp, state_dict=None, safe_serialization=True)
        loaded = cls.from_pretrained(_tiny_lm(), tmp)
        if not isinstance(loaded, torch.nn.Module):
            raise PluginCheckError(f"tuner {name!r}: {SIGNATURES['from_pretrained']}; it returned "
                                   f"{type(loaded).__name__}")
        diff = float((loaded.eval()(input_ids=ids).logits - want).abs().max())
    if diff > 1e-4:
        raise PluginCheckError(f"tuner {name!r}: from_pretrained(save_pretrained(model)) changes the outputs by "
                               f"{diff:.2g}; save_pretrained must write what prepare_model made train")
    return (f"prepare_model on a tiny Llama: {trainable:,} of {total:,} parameters train; save_pretrained -> "
            f"from_pretrained reproduces the outputs (max diff {diff:.1e})")


TUNERS.attach(collector=collect_tuners, interface_check=check_plugin_entry)
