"""SFT end to end with callbacks and eval metrics: two ZeRO-3 ranks, an early stop that must fire at step 1, the
example plugin files loaded through ``plugins`` (driver and actors), and ``eval/acc`` / ``eval/top2_acc`` /
``eval/bleu`` / ``eval/rouge-l`` equal to the same metrics recomputed by hand from the final export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from raylhf.config import SFTConfig, build_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

ROOT = Path(__file__).resolve().parents[2]
CALLBACK_FILE = ROOT / "examples/plugins/callbacks_early_stop.py"
METRIC_FILE = ROOT / "examples/plugins/metric_top2.py"


@pytest.fixture
def plugins_cleanup():
    from raylhf.algos.text_metrics import METRICS
    from raylhf.plugins import registry
    from raylhf.plugins.callbacks import CALLBACKS, extra_callbacks

    before = list(extra_callbacks)
    yield
    extra_callbacks[:] = before
    for name in ("stop_at_step", "EventRecorder"):
        CALLBACKS.unregister(name)
    for name in ("top2_acc", "reply_exact"):
        METRICS.unregister(name)
    for f in (CALLBACK_FILE, METRIC_FILE):
        registry.forget(str(f))
    registry.activate([], replace=True)


def test_early_stop_in_sft_with_metrics_from_two_ranks(tmp_path: Path, tiny_model_dir: Path,
                                                       plugins_cleanup: None) -> None:
    from transformers import AutoModelForCausalLM

    from raylhf.algos.text_metrics import compute_nlg_metrics, reply_span
    from raylhf.assets import load_tokenizer
    from raylhf.data.loss_scale import get_loss_scale
    from raylhf.demo.tasks.chat_data import chat_examples, two_turn_chats
    from raylhf.plugins import registry
    from raylhf.trainers.sft import encode_examples, run_sft

    registry.activate([str(CALLBACK_FILE), str(METRIC_FILE)], replace=True)  # as --plugins does before validation
    train = chat_examples(two_turn_chats(8, seed=5, max_operand=9))
    heldout = chat_examples(two_turn_chats(5, seed=21, max_operand=9))
    cfg = build_config(SFTConfig, overrides=[
        ("plugins", [str(CALLBACK_FILE), str(METRIC_FILE)]),
        ("model.path", str(tiny_model_dir)), ("data.shuffle", False),
        ("sft.num_steps", 6), ("sft.batch_size", 4), ("sft.eval_every", 1), ("sft.eval_batch_size", 4),
        ("sft.metrics", ["acc", "top2_acc", "nlg"]),
        # eval/loss can never rise by 1e9: every evaluation after step 0 is "no improvement"; patience 1 -> the
        # evaluation at step 1 is the bad one -> stop at step 1 of 6 (patience counting: tests/plugins)
        ("callbacks", [{"name": "early_stopping",
                        "kwargs": {"metric": "eval/loss", "patience": 1, "mode": "max", "min_delta": 1e9}}]),
        ("policy.lr", 5e-3), ("policy.num_workers", 2), ("policy.zero_stage", 3), ("policy.micro_batch_size", 2),
        ("policy.num_cpus_per_worker", 1), ("logging.run_dir", str(tmp_path / "runs")), ("logging.progress", False),
    ])
    res = run_sft(cfg, examples=train, eval_examples=heldout)
    ckpt, history = res.checkpoint, res.history

    assert [r["step"] for r in history if "loss/ce" in r] == [1]
    assert {"step": 1, "stopped_early_by": "early_stopping"} in history
    evals = [r for r in history if "eval/acc" in r]
    assert [r["step"] for r in evals] == [0, 1]  # the stop step's evaluation is the final one
    final = evals[-1]
    assert set(final) >= {"eval/loss", "eval/acc", "eval/top2_acc", "eval/scored_tokens", "eval/bleu", "eval/rouge-l"}

    assert ckpt is not None and (Path(ckpt) / "config.json").is_file()  # the final export still happens
    run_dir = Path(ckpt).parent
    events = json.loads((run_dir / "callback_events.json").read_text())  # the always-on EventRecorder
    assert [e["step"] for e in events if e["event"] == "step_end"] == [1]
    assert [e["step"] for e in events if e["event"] == "evaluate"] == [0, 1]
    assert [(e["step"], e["checkpoint"]) for e in events if e["event"] == "save"] == [(1, ckpt)]
    assert events[-1] == {"event": "train_end", "step": 1, "stopped_by": "early_stopping"}

    # the same metrics by hand from the export (fp32, the weights the final evaluation used)
    tok = load_tokenizer(tiny_model_dir)
    rows, _ = encode_examples(tok, heldout, cfg.sft.max_length, get_loss_scale("default"))
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    hits = top2 = total = 0
    preds, refs = [], []
    with torch.no_grad():
        for ids, w in rows:
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0]
            for t in range(1, len(ids)):
                if w[t] > 0:
                    total += 1
                    hits += int(logits[t - 1].argmax()) == ids[t]
                    top2 += ids[t] in logits[t - 1].topk(2).indices.tolist()
            s, e = reply_span(w)
            gen = model.generate(input_ids=x[:, :s], attention_mask=torch.ones(1, s, dtype=torch.long),
                                 max_new_tokens=e - s, do_sample=False, pad_token_id=tok.pad_token_id)
            preds.append(tok.decode(gen[0, s:].tolist(), skip_special_tokens=True).strip())
            refs.append(tok.decode(ids[s:e], skip_special_tokens=True).strip())
    nlg = compute_nlg_metrics(type("P", (), {"predictions": preds, "label_ids": refs})())
    print(f"acc {hits}/{total}, top2 {top2}/{total}, nlg {nlg}, run: {final}")
    assert final["eval/scored_tokens"] == total
    assert final["eval/acc"] == pytest.approx(hits / total)
    assert final["eval/top2_acc"] == pytest.approx(top2 / total)
    assert nlg["rouge-l"] > 0 and nlg["bleu"] > 0  # some words right: the comparison below is not 0 == 0
    assert final["eval/bleu"] == pytest.approx(nlg["bleu"], abs=1e-6)
    assert final["eval/rouge-l"] == pytest.approx(nlg["rouge-l"], abs=1e-6)


def test_grpo_stops_after_the_step_a_plugin_callback_names(tmp_path: Path, tiny_model_dir: Path,
                                                           plugins_cleanup: None) -> None:
    from raylhf.config import GRPOConfig
    from raylhf.demo.tasks.arithmetic import make_problems, write_jsonl
    from raylhf.plugins import registry
    from raylhf.trainers.grpo import run_grpo

    cols = {"prompt": "question", "solution": "answer"}
    train = write_jsonl(make_problems(32, seed=1, max_operand=9), tmp_path / "train.jsonl", cols)
    heldout = write_jsonl(make_problems(4, seed=2, max_operand=9), tmp_path / "eval.jsonl", cols)
    registry.activate([str(CALLBACK_FILE)], replace=True)
    cfg = build_config(GRPOConfig, overrides=[
        ("plugins", [str(CALLBACK_FILE)]), ("callbacks", [{"name": "stop_at_step", "kwargs": {"step": 2}}]),
        ("model.path", str(tiny_model_dir)), ("data.train_files", [str(train)]), ("data.eval_files", [str(heldout)]),
        ("data.columns", cols), ("grpo.num_steps", 5), ("grpo.prompt_batch_size", 4),
        ("grpo.samples_per_prompt", 2), ("rollout.max_new_tokens", 8), ("policy.micro_batch_size", 4),
        ("rollout.num_cpus_per_engine", 1), ("policy.num_cpus_per_worker", 1), ("checkpoint.save_every", 1),
        ("logging.run_dir", str(tmp_path / "runs")), ("logging.progress", False),
    ])
    res = run_grpo(cfg)
    rows = res.history
    assert [r["step"] for r in rows if "time/train" in r or "loss/total" in r] == [1, 2]
    assert {"step": 2, "stopped_early_by": "StopAtStep"} in rows
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 2]  # the final evaluation at the stop step
    assert res.checkpoint and (Path(res.checkpoint) / "config.json").is_file()
    events = json.loads((res.run_dir / "callback_events.json").read_text())
    assert [e["step"] for e in events if e["event"] == "step_end"] == [1, 2]
    saves = [(e["step"], Path(e["checkpoint"]).name) for e in events if e["event"] == "save"]
    assert saves == [(1, "step-000001"), (2, "step-000002"), (2, "checkpoint")]  # periodic ones, then the export
    assert events[-1] == {"event": "train_end", "step": 2, "stopped_by": "StopAtStep"}
