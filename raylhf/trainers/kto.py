"""`python -m raylhf.kto`: KTO on unpaired replies labelled desirable / undesirable (``prompt`` + ``completion`` +
``label`` rows; ``chosen`` / ``rejected`` pairs are unpaired). With no data files it runs the embedded default:
the SFT warm-up of the arithmetic task, then KTO on synthetic labelled answers.

Its own command (not a ``dpo.loss_type``): its data is unpaired, its knobs (desirable / undesirable weights)
and its reference point (``max(0, E[policy - reference])`` over mismatched prompt / reply pairs) are its own.
It shares the driver pieces (``raylhf.driver.reference_loop``) and the PreferenceWorker with the DPO family.
"""

from __future__ import annotations

from typing import Any

from actors.dpo_worker import PreferenceLoss
from raylhf.assets import load_tokenizer
from raylhf.config import KTOConfig
from raylhf.data import DataError
from raylhf.data.pairs import collate_unpaired, encode_unpaired, load_unpaired_from_config
from raylhf.driver.cluster import resolve_model_path
from raylhf.driver.reference_loop import run_preference


def run_kto(cfg: KTOConfig, model_path: str | None = None, train: list | None = None,
            heldout: list | None = None) -> Any:
    """Train; ``model_path`` / ``train`` / ``heldout`` (UnpairedExamples) override the config's. Returns the
    RunResult."""

    k = cfg.kto
    model_path = model_path or resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model.tokenizer or model_path)
    train = train if train is not None else load_unpaired_from_config(cfg.data, "train")
    heldout = heldout if heldout is not None else load_unpaired_from_config(cfg.data, "eval")
    rows, dropped = encode_unpaired(tokenizer, train, k.max_length, cfg.data.seed)
    held, _ = encode_unpaired(tokenizer, heldout, k.max_length, cfg.data.seed + 1) if len(heldout) >= 2 else ([], 0)
    if len(rows) < k.batch_size:
        raise DataError(f"{len(rows)} usable KTO examples ({dropped} dropped: no reply token within "
                        f"kto.max_length={k.max_length}) < kto.batch_size={k.batch_size}")
    good = sum(r.desirable for r in rows)
    if good in (0, len(rows)):
        print(f"[kto] warning: all {len(rows)} examples are {'desirable' if good else 'undesirable'}", flush=True)
    spec = PreferenceLoss(loss_type="kto", beta=k.beta, desirable_weight=k.desirable_weight,
                          undesirable_weight=k.undesirable_weight)
    summary = (f"beta {k.beta}, {len(rows)} examples ({good} desirable)"
               + (f" ({dropped} dropped: too long)" if dropped else "") + f", {len(held)} held-out; reference: "
               + ("precomputed" if k.precompute_ref else "per batch"))
    return run_preference(cfg, k, "kto", spec, model_path, rows, held, collate_unpaired, summary)


def cli(cfg: KTOConfig) -> int:
    """`python -m raylhf.kto` on the config's data files (without any: ``raylhf.demo.offline``)."""
    res = run_kto(cfg)
    print(f"checkpoint: {res.checkpoint}\nrun dir: {res.run_dir}")
    return 0
