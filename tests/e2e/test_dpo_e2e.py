"""The DPO family and KTO end to end: Ray, DeepSpeed (gloo) PreferenceWorkers, the reference group."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from raylhf.config import DPOConfig, KTOConfig, build_config
from raylhf.demo.tasks.arithmetic import write_jsonl
from raylhf.demo.tasks.demo_data import INSTRUCTION
from raylhf.demo.tasks.dpo_pairs import preference_rows, unpaired_rows

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def _prompts(n: int, seed: int) -> list[Any]:
    from raylhf.data import PromptExample
    from raylhf.demo.tasks.arithmetic import make_problems

    return [PromptExample([{"role": "user", "content": r["prompt"] + INSTRUCTION}],
                          {"solution": r["solution"], "equation": r["equation"]})
            for r in make_problems(n, seed=seed, max_operand=9)]


def _common(tmp_path: Path, model: Path) -> dict[str, Any]:
    return {"model.path": str(model), "policy.lr": 2e-3, "policy.micro_batch_size": 6,  # 3 pairs per micro-batch
            "policy.num_cpus_per_worker": 1, "reference.num_cpus": 1, "data.shuffle": False,
            "logging.run_dir": str(tmp_path / "runs"), "logging.progress": False, "logging.report_to": [],
            "checkpoint.save_final": False}


def dpo_cfg(tmp_path: Path, model: Path, **over: Any) -> DPOConfig:
    train = write_jsonl(preference_rows(_prompts(8, seed=1), seed=1), tmp_path / "pairs.jsonl")
    heldout = write_jsonl(preference_rows(_prompts(4, seed=2), seed=2), tmp_path / "pairs_eval.jsonl")
    base = {**_common(tmp_path, model), "data.train_files": str(train), "data.eval_files": str(heldout),
            "dpo.batch_size": 8, "dpo.num_steps": 5}
    base.update(over)
    return build_config(DPOConfig, overrides=list(base.items()))


def _train_rows(res: Any) -> list[dict[str, Any]]:
    return [r for r in res.history if "loss/total" in r]


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Any:
    from raylhf.trainers.dpo import run_dpo

    tmp = tmp_path_factory.mktemp("dpo")
    return run_dpo(dpo_cfg(tmp, tiny_model_dir, **{"dpo.rpo_alpha": 0.1}))


def test_dpo_learns_the_training_pairs(dpo_run: Any) -> None:
    rows = _train_rows(dpo_run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    first, last = rows[0], rows[-1]
    assert first["loss/pref"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 1
    assert first["rewards/accuracies"] == 0.0 and last["rewards/accuracies"] >= 0.75
    assert last["loss/pref"] < first["loss/pref"] - 0.05 and last["rewards/margins"] > 0
    for key in ("loss/nll", "rewards/chosen", "rewards/rejected", "logps/accuracies", "grad_norm", "lr",
                "time/step"):
        assert key in last, key
    assert dpo_run.eval_before["eval/rewards/accuracies"] == 0.0
    assert "eval/loss" in dpo_run.eval_after and (dpo_run.run_dir / "curves.png").exists()


def test_precomputed_reference_on_two_ranks_gives_the_same_first_step(tmp_path: Path, tiny_model_dir: Path,
                                                                      dpo_run: Any) -> None:
    """precompute_ref (then no reference actor) and 2 data-parallel ranks (4 pairs each, 2 per micro-batch):
    the first step's loss and gradient are those of the per-batch reference run on one rank."""
    from raylhf.trainers.dpo import run_dpo

    cache = tmp_path / "ref_cache"
    res = run_dpo(dpo_cfg(tmp_path, tiny_model_dir, **{
        "dpo.rpo_alpha": 0.1, "dpo.num_steps": 1, "dpo.precompute_ref": True, "dpo.ref_cache_dir": str(cache),
        "policy.num_workers": 2, "policy.micro_batch_size": 4}))
    assert len(list(cache.glob("*.pt"))) == 1  # the whole dataset's reference log-probs, cached
    step1, per_batch = _train_rows(res)[0], _train_rows(dpo_run)[0]
    for key in ("loss/total", "loss/pref", "loss/nll", "grad_norm"):  # exact; metric means over ranks are
        assert step1[key] == pytest.approx(per_batch[key], rel=1e-4, abs=1e-6), key  # token-weighted


def test_simpo_starts_no_reference_and_learns(tmp_path: Path, tiny_model_dir: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import raylhf.driver.reference_loop
    from raylhf.trainers.dpo import run_dpo

    def no_reference(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("SimPO is reference-free: no reference group may start")

    monkeypatch.setattr(raylhf.driver.reference_loop, "start_reference", no_reference)
    res = run_dpo(dpo_cfg(tmp_path, tiny_model_dir, **{"dpo.loss_type": "simpo", "dpo.num_steps": 4,
                                                       "dpo.simpo_gamma": 0.5}))
    rows = _train_rows(res)
    assert rows[-1]["loss/total"] < rows[0]["loss/total"]
    assert rows[-1]["rewards/margins"] > rows[0]["rewards/margins"]


def test_kto_runs_on_unpaired_data(tmp_path: Path, tiny_model_dir: Path) -> None:
    from raylhf.trainers.kto import run_kto

    train = write_jsonl(unpaired_rows(_prompts(8, seed=1), seed=1), tmp_path / "kto.jsonl")
    cfg = build_config(KTOConfig, overrides=list({
        **_common(tmp_path, tiny_model_dir), "data.train_files": str(train), "kto.batch_size": 8,
        "kto.num_steps": 4}.items()))
    res = run_kto(cfg)
    rows = _train_rows(res)
    assert rows[0]["kto/kl"] == pytest.approx(0.0, abs=1e-4)  # z0 = max(0, E[policy - ref]) = 0 at the start
    assert rows[-1]["loss/total"] < rows[0]["loss/total"]
    assert rows[-1]["rewards/accuracies"] > rows[0]["rewards/accuracies"]
