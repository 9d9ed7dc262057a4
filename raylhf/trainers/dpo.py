"""`python -m raylhf.dpo`: the DPO family on chosen / rejected pairs (``dpo.loss_type``: sigmoid, ipo, hinge,
cdpo, simpo, orpo, cpo). With no data files it runs the embedded default: the SFT warm-up of the arithmetic
task, then DPO on synthetic preferences (the right equation vs a wrong or badly formatted answer).

One step: pairs -> (reference summed log-probs, unless precomputed or the loss is reference-free) ->
PreferenceWorker update (the loss of ``raylhf.algos.dpo``). Docs: docs/dpo.md.
"""

from __future__ import annotations

from typing import Any

from actors.dpo_worker import PreferenceLoss
from raylhf.assets import load_tokenizer
from raylhf.config import DPOConfig
from raylhf.config.dpo import DPOAlgoConfig
from raylhf.data import DataError, load_from_config
from raylhf.data.pairs import collate_pairs, encode_pairs
from raylhf.driver.cluster import resolve_model_path
from raylhf.driver.reference_loop import run_preference


def loss_spec(d: DPOAlgoConfig) -> Any:
    """The worker's PreferenceLoss for the ``dpo`` section."""

    return PreferenceLoss(loss_type=d.loss_type, beta=d.effective_beta, label_smoothing=d.label_smoothing,
                          simpo_gamma=d.simpo_gamma, cpo_alpha=d.cpo_alpha, rpo_alpha=d.rpo_alpha)


def run_dpo(cfg: DPOConfig, model_path: str | None = None, train: list | None = None,
            heldout: list | None = None) -> Any:
    """Train; ``model_path`` / ``train`` / ``heldout`` (PreferenceExamples) override the config's. Returns the
    RunResult (run dir, final HF export, metric history, held-out metrics before / after)."""

    d = cfg.dpo
    model_path = model_path or resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path)
    train = train if train is not None else load_from_config(cfg.data, "preference", split="train")
    heldout = heldout if heldout is not None else load_from_config(cfg.data, "preference", split="eval")
    rows, dropped = encode_pairs(tokenizer, train, d.max_length)
    held, _ = encode_pairs(tokenizer, heldout, d.max_length)
    if len(rows) < d.batch_size:
        raise DataError(f"{len(rows)} usable preference pairs ({dropped} dropped: no reply token within "
                        f"dpo.max_length={d.max_length}) < dpo.batch_size={d.batch_size}")
    spec = loss_spec(d)
    summary = (f"loss {d.loss_type} (beta {spec.beta}), {len(rows)} pairs"
               + (f" ({dropped} dropped: too long)" if dropped else "") + f", {len(held)} held-out; reference: "
               + (("precomputed" if d.precompute_ref else "per batch") if spec.uses_reference else "none"))
    return run_preference(cfg, d, "dpo", spec, model_path, rows, held, collate_pairs, summary)


def cli(cfg: DPOConfig) -> int:
    """`python -m raylhf.dpo` on the config's data files (without any: ``raylhf.demo.offline``)."""
    res = run_dpo(cfg)
    print(f"checkpoint: {res.checkpoint}\nrun dir: {res.run_dir}")
    return 0
