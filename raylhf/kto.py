"""`python -m raylhf.kto`: KTO on unpaired replies labelled desirable / undesirable (``prompt`` + ``completion`` +
``label`` rows; ``chosen`` / ``rejected`` pairs are unpaired). With no data files it runs the embedded default:
the SFT warm-up of the arithmetic task, then KTO on synthetic labelled answers.

Its own command (not a ``dpo.loss_type``): its data is unpaired, its knobs (desirable / undesirable weights)
and its reference point (``max(0, E[policy - reference])`` over mismatched prompt / reply pairs) are its own.
It shares the driver pieces (``raylhf.preference``) and the PreferenceWorker with the DPO family.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from raylhf.config import KTOConfig


def run_kto(cfg: KTOConfig, model_path: str | None = None, train: list | None = None,
            heldout: list | None = None) -> Any:
    """Train; ``model_path`` / ``train`` / ``heldout`` (UnpairedExamples) override the config's. Returns the
    OfflineResult."""
    from actors.preference import PreferenceLoss
    from raylhf.assets import load_tokenizer
    from raylhf.data import DataError
    from raylhf.preference import run_preference
    from raylhf.preference_data import collate_unpaired, encode_unpaired, load_unpaired_from_config
    from raylhf.runtime import resolve_model_path

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


def main(argv: Sequence[str] | None = None) -> int:
    from raylhf.runtime import run_main

    return run_main("raylhf.kto", KTOConfig, argv, _run)


def _run(cfg: KTOConfig) -> int:
    if not cfg.data.train_files:
        run_default(cfg)
        return 0
    res = run_kto(cfg)
    print(f"checkpoint: {res.checkpoint}\nrun dir: {res.run_dir}")
    return 0


def run_default(cfg: KTOConfig) -> dict[str, tuple[float, float]]:
    """The cached SFT warm-up (shared with the GRPO demo), then KTO on one labelled answer per training prompt;
    prints the held-out metrics and the greedy accuracy before / after."""
    from raylhf.grpo import warmup_policy
    from raylhf.preference import greedy_accuracy, report, required_cpus
    from raylhf.preference_data import UnpairedExample
    from raylhf.runtime import init_ray
    from raylhf.tasks.preferences import unpaired_splits

    init_ray(cfg.ray, required_cpus(cfg, True))
    start = warmup_policy(cfg)  # type: ignore[arg-type]  # reads model / policy / demo / logging / ray / seed
    train_rows, held_rows, prompts = unpaired_splits(cfg.demo)

    def examples(rows: list[dict[str, Any]]) -> list[UnpairedExample]:
        return [UnpairedExample([{"role": "user", "content": r["prompt"]}], r["completion"], r["label"]) for r in rows]

    greedy_before = greedy_accuracy(start, prompts)
    res = run_kto(cfg, model_path=start, train=examples(train_rows), heldout=examples(held_rows))
    greedy_after = greedy_accuracy(res.checkpoint, prompts) if res.checkpoint else {}
    return report(res, greedy_before, greedy_after, len(held_rows), len(prompts), "kto")


if __name__ == "__main__":
    raise SystemExit(main())
