"""Eval metrics for SFT's held-out rows (ms-swift's ``METRIC_MAPPING``): the registry, the built-ins, the driver's
assembly of predictions from every rank.

An entry is a tuple ``(compute_fn, preprocess_logits_fn | None)``:

* ``preprocess_logits_fn(logits [B, L, V], labels [B, L]) -> tensor [B, L, ...]`` runs in the policy worker on
  each micro-batch, so only what the metric needs leaves it (e.g. the argmax token ids); ``None`` sends the raw
  logits (costly: ``V`` floats per token);
* ``compute_fn(eval_prediction) -> dict[str, float]`` runs in the driver over the held-out rows of every rank;
  its keys are logged as ``eval/<key>``. ``eval_prediction`` is an :class:`EvalPrediction`: ``predictions`` is
  the preprocess output padded with -100 to ``[N, L, ...]`` (numpy), ``label_ids`` the input ids ``[N, L]``
  with -100 where a token is not trained (and on padding). Position ``t`` of ``predictions`` comes from the
  logits at ``t``, which predict the token at ``t + 1`` (shift as ms-swift's ``compute_acc_metrics`` does).

A compute function marked ``predict_with_generate`` (``register_metric(..., predict_with_generate=True)``) gets
greedy generations instead: ``predictions`` are the generated replies (text) of the held-out prompts, and
``label_ids`` the reference replies (text). The prompt is a row's tokens before its last trained run (the last
reply), and generation stops at end-of-sequence or after as many tokens as the reference has.

Built-ins: ``acc`` (token accuracy over the trained label tokens) and ``nlg`` (corpus BLEU through sacrebleu and
mean ROUGE-L F1 through rouge-score, both 0-100, as ms-swift reports them).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from raylhf.plugins.registry import METRICS, PluginCheckError, source_of

IGNORE = -100
ComputeFn = Callable[[Any], dict[str, float]]
PreprocessFn = Callable[[Any, Any], Any]
MetricEntry = tuple[ComputeFn, PreprocessFn | None]
COMPUTE_SIGNATURE = "def compute(eval_prediction) -> dict[str, float]"
PREPROCESS_SIGNATURE = "def preprocess(logits, labels) -> Tensor"


class EvalPrediction:
    """transformers' ``EvalPrediction``: ``predictions`` and ``label_ids`` (also unpackable and indexable as
    ``(predictions, label_ids)``, the way ms-swift's metrics read it)."""

    def __init__(self, predictions: Any, label_ids: Any, inputs: Any = None) -> None:
        self.predictions, self.label_ids, self.inputs = predictions, label_ids, inputs

    def _parts(self) -> tuple[Any, ...]:
        return (self.predictions, self.label_ids) + ((self.inputs,) if self.inputs is not None else ())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._parts())

    def __getitem__(self, i: int) -> Any:
        return self._parts()[i]

    def __len__(self) -> int:
        return len(self._parts())


def _check_entry(name: str, obj: Any) -> None:
    if not (isinstance(obj, tuple) and len(obj) == 2 and callable(obj[0]) and (obj[1] is None or callable(obj[1]))):
        raise TypeError(f"metric {name!r} must be a tuple (compute_fn, preprocess_logits_fn or None), got "
                        f"{type(obj).__name__}")


METRICS.attach(check=_check_entry)


def register_metric(name: str | None = None, preprocess: PreprocessFn | None = None,
                    predict_with_generate: bool = False) -> Callable[[ComputeFn], ComputeFn]:
    """``@register_metric("name", preprocess=fn)`` on a compute function; ``predict_with_generate=True`` makes it
    score greedy generations (text) instead of logits. Returns the function unchanged."""

    def deco(fn: ComputeFn) -> ComputeFn:
        if predict_with_generate:
            fn.predict_with_generate = True  # type: ignore[attr-defined]
        METRICS.register(name or fn.__name__, (fn, preprocess), source_of(fn))
        return fn

    return deco


def collect_metrics(value: Any, source: str) -> None:
    """A plugin module's ``METRIC_MAPPING``: name -> ``(compute_fn, preprocess_fn | None)`` (or a bare compute
    function)."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{source} must be a dict of name -> (compute_fn, preprocess_logits_fn or None)")
    for name, entry in value.items():
        if callable(entry) and not isinstance(entry, tuple):
            entry = (entry, None)
        if isinstance(entry, list):
            entry = tuple(entry)
        _check_entry(str(name), entry)
        METRICS.register(str(name), entry, f"{source}")


def generates(entry: MetricEntry) -> bool:
    """Whether the metric scores generated text (``predict_with_generate``) rather than logits."""
    return bool(getattr(entry[0], "predict_with_generate", False))


# ------------------------------------------------------------------ built-ins

def preprocess_logits_for_acc(logits: Any, labels: Any) -> Any:
    """The argmax token id at every position (what leaves the worker for ``acc``)."""
    if isinstance(logits, (list, tuple)):
        logits = logits[0]
    return logits.argmax(dim=-1)


def compute_acc_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """``acc``: the share of trained label tokens whose argmax prediction (from the previous position) is right."""
    import numpy as np

    preds = np.asarray(eval_prediction.predictions)[:, :-1]
    labels = np.asarray(eval_prediction.label_ids)[:, 1:]
    mask = labels != IGNORE
    total = int(mask.sum())
    return {"acc": float((preds[mask] == labels[mask]).sum()) / total if total else float("nan")}


def nlg_tokens(text: str) -> list[str]:
    """Words and single punctuation marks, lowercased (ROUGE's tokenizer; keeps ``+``/``=`` and non-Latin
    words, which rouge-score's default drops)."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


class _Tokenizer:
    def tokenize(self, text: str) -> list[str]:
        return nlg_tokens(text)


def compute_nlg_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """``nlg``: corpus BLEU (sacrebleu, its 13a tokenization) and the mean ROUGE-L F1 (rouge-score) of the
    generated replies against the references, both 0-100."""
    import sacrebleu
    from rouge_score import rouge_scorer

    preds = [str(p) for p in eval_prediction.predictions]
    refs = [str(r) for r in eval_prediction.label_ids]
    if not preds:
        return {"bleu": float("nan"), "rouge-l": float("nan")}
    bleu = sacrebleu.corpus_bleu(preds, [refs]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Tokenizer())
    rouge = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)]
    return {"bleu": float(bleu), "rouge-l": 100.0 * sum(rouge) / len(rouge)}


compute_nlg_metrics.predict_with_generate = True  # type: ignore[attr-defined]
METRICS.register("acc", (compute_acc_metrics, preprocess_logits_for_acc))
METRICS.register("nlg", (compute_nlg_metrics, None))


# ------------------------------------------------------------------ rows, requests, assembly (driver side)

def reply_span(mask: Sequence[float] | Any) -> tuple[int, int] | None:
    """``(start, end)`` of the last run of trained tokens (weight > 0) of a row: the reply generation metrics
    compare against; None when no token is trained."""
    values = [float(w) for w in mask]
    end = next((i + 1 for i in range(len(values) - 1, -1, -1) if values[i] > 0), None)
    if end is None:
        return None
    start = end - 1
    while start > 0 and values[start - 1] > 0:
        start -= 1
    return start, end


def label_ids(ids: Sequence[int], weights: Sequence[float]) -> list[int]:
    """transformers' labels: the token ids, -100 where the token is not trained."""
    return [int(t) if float(w) > 0 else IGNORE for t, w in zip(ids, weights, strict=True)]


def metric_request(names: Sequence[str]) -> dict[str, Any]:
    """What the worker computes for ``names``: ``preprocess`` (the logits metrics, by name) and ``generate``."""
    entries = {n: METRICS.get_entry(n) for n in names}
    return {"preprocess": [n for n, e in entries.items() if not generates(e)],
            "generate": any(generates(e) for e in entries.values())}


def merge_outputs(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The worker outputs of consecutive row chunks (rank order, then call order) as one."""
    out: dict[str, Any] = {"preprocessed": {}, "generated": []}
    for p in parts:
        for name, rows in p.get("preprocessed", {}).items():
            out["preprocessed"].setdefault(name, []).extend(rows)
        out["generated"].extend(p.get("generated", []))
    return out


def trim_outputs(out: dict[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` rows of merged worker outputs (drops the filler rows a call was padded with)."""
    return {"preprocessed": {k: v[:n] for k, v in out["preprocessed"].items()}, "generated": out["generated"][:n]}


def _pad(rows: Sequence[Any], length: int) -> Any:
    import numpy as np

    arrays = [np.asarray(r) for r in rows]
    tail = arrays[0].shape[1:] if arrays else ()
    dtype = np.result_type(*[a.dtype for a in arrays]) if arrays else np.int64
    out = np.full((len(arrays), length, *tail), IGNORE, dtype=dtype)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = a
    return out


def compute_metrics(names: Sequence[str], rows: Sequence[tuple[Sequence[int], Sequence[float]]],
                    outputs: dict[str, Any], decode: Callable[[Sequence[int]], str] | None = None,
                    ) -> dict[str, float]:
    """``eval/<key>`` for every metric in ``names`` over ``rows`` (ids, weights) and the merged worker
    ``outputs`` (one entry per row, in row order); ``decode`` turns token ids into text (generation metrics)."""
    length = max(len(ids) for ids, _ in rows)
    labels = _pad([label_ids(ids, w) for ids, w in rows], length)
    result: dict[str, float] = {}
    for name in names:
        compute, _ = METRICS.get_entry(name)
        if generates(METRICS.get_entry(name)):
            if decode is None:
                raise ValueError(f"metric {name!r} scores generated text and needs a tokenizer to decode")
            preds, refs = [], []
            for (ids, w), gen in zip(rows, outputs["generated"], strict=True):
                span = reply_span(w)
                if span is None or span[0] == 0 or gen is None:
                    continue
                preds.append(decode(gen).strip())
                refs.append(decode(list(ids[span[0]:span[1]])).strip())
            prediction = EvalPrediction(preds, refs)
        else:
            prediction = EvalPrediction(_pad(outputs["preprocessed"][name], length), labels)
        try:
            values = compute(prediction)
        except Exception as e:
            raise RuntimeError(f"metric {name!r} ({source_of(compute)}) failed: {type(e).__name__}: {e}") from e
        if not isinstance(values, Mapping):
            raise TypeError(f"metric {name!r} ({source_of(compute)}) returned {type(values).__name__}; expected "
                            f"{COMPUTE_SIGNATURE}")
        for k, v in values.items():
            result[f"eval/{k}"] = float(v)
    return result


def generation_rows(rows: Sequence[tuple[Sequence[int], Sequence[float]]]) -> int:
    """How many rows have a prompt before their last reply (what generation metrics score)."""
    return sum(1 for _, w in rows if (s := reply_span(w)) is not None and s[0] > 0)


# ------------------------------------------------------------------ raylhf check-plugin

def _required_positional(fn: Callable[..., Any]) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.default is inspect.Parameter.empty
            and p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]


def check_plugin_entry(name: str, obj: Any) -> str:
    """Run the metric on a tiny synthetic input (2 rows, 5 positions, 8-token vocabulary; or two generated
    replies) and describe what it returned; a wrong signature or return shape raises PluginCheckError."""
    import torch

    try:
        _check_entry(name, obj)
    except TypeError as e:
        raise PluginCheckError(f"{e}: METRIC_MAPPING = {{'{name}': (compute, preprocess or None)}} with "
                               f"{COMPUTE_SIGNATURE} and {PREPROCESS_SIGNATURE}") from None
    compute, preprocess = obj
    where = f"metric {name!r} ({source_of(compute)})"
    req = _required_positional(compute)
    if len(req) != 1:
        raise PluginCheckError(f"{where}: compute function takes {len(req)} required positional arguments "
                               f"({', '.join(req) or 'none'}); expected {COMPUTE_SIGNATURE}")
    if generates(obj):
        prediction = EvalPrediction(["the cat sat on the mat", "2 + 2 = 4"], ["the cat sat on a mat", "2 + 2 = 4"])
        seen = "2 generated replies"
    else:
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(2, 5, 8, generator=g)
        labels = torch.tensor([[IGNORE, IGNORE, 3, 4, 5], [IGNORE, 1, 2, IGNORE, IGNORE]])
        if preprocess is not None:
            req_p = _required_positional(preprocess)
            if len(req_p) != 2:
                raise PluginCheckError(f"{where}: preprocess function takes {len(req_p)} required positional "
                                       f"arguments ({', '.join(req_p) or 'none'}); expected {PREPROCESS_SIGNATURE}")
            out = preprocess(logits, labels)
            if not hasattr(out, "shape") or tuple(out.shape[:2]) != (2, 5):
                raise PluginCheckError(f"{where}: preprocess returned {type(out).__name__} "
                                       f"{tuple(getattr(out, 'shape', ()))} for logits [2, 5, 8]; expected a tensor "
                                       f"[2, 5, ...] ({PREPROCESS_SIGNATURE})")
            seen = f"preprocess -> {tuple(out.shape)}"
        else:
            out = logits
            seen = "raw logits (2, 5, 8)"
        prediction = EvalPrediction(out.numpy(), labels.numpy())
    values = compute(prediction)
    if not isinstance(values, Mapping) or not all(isinstance(k, str) for k in values):
        raise PluginCheckError(f"{where}: compute returned {type(values).__name__}; expected {COMPUTE_SIGNATURE}")
    try:
        shown = {k: round(float(v), 4) for k, v in values.items()}
    except (TypeError, ValueError) as e:
        raise PluginCheckError(f"{where}: compute returned a value that is not a number ({e}); expected "
                               f"{COMPUTE_SIGNATURE}") from None
    finite = all(math.isfinite(v) for v in shown.values())
    return f"metric {name}: {seen}; compute -> {shown}" + ("" if finite else " (not finite on this input)")


METRICS.attach(collector=collect_metrics, interface_check=check_plugin_entry)
