"""`raylhf infer` without an engine: argument errors, resume (skip, cut a half line, refuse another input's output),
and encoder scoring that equals the EncoderWorker's own forward (actors/encoder.py) on the trainers' encodings."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from actors.encoder import EncoderWorker
from raylhf.assets import load_tokenizer
from raylhf.data import DataError
from raylhf.data.retrieval import TaskCard, encode_generative, encode_pair, encode_side
from raylhf.data.types import Row
from raylhf.tools import infer


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Echo:
    """A backend that needs no model: the reply is the prompt reversed; counts the rows it ran."""

    added = ("completion", "finish_reason")

    def __init__(self) -> None:
        self.ran: list[int] = []

    def encode(self, row: Row) -> str:
        if not isinstance(row.data.get("prompt"), str):
            raise row.error("no prompt")
        return row.data["prompt"]

    def ready(self, items: Sequence[Any]) -> None:
        pass

    def run(self, items: Sequence[tuple[int, str]]) -> list[dict[str, Any]]:
        self.ran += [i for i, _ in items]
        return [{"completion": p[::-1], "finish_reason": "stop"} for _, p in items]


def args_for(model: Path, inp: Path, out: Path, *extra: str) -> Any:
    return infer.parser().parse_args(["--model", str(model), "--input", str(inp), "--output", str(out), *extra])


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    return write_rows(tmp_path / "in.jsonl", [{"prompt": f"p{i}", "id": i, "meta": {"k": [i]}} for i in range(5)])


def test_argument_errors(tmp_path: Path, tiny_model_dir: Path, prompts: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out.jsonl"
    cases = [
        (["--model", str(tmp_path), "--input", str(prompts), "--output", str(out)], "no config.json"),
        (["--model", str(tiny_model_dir), "--input", str(tmp_path / "nope.jsonl"), "--output", str(out)],
         "file not found"),
        (["--model", str(tiny_model_dir), "--input", str(prompts), "--output", str(out), "--batch-size", "0"],
         "--batch-size must be >= 1"),
        (["--model", str(tiny_model_dir), "--input", str(prompts), "--output", str(out), "--n", "3"],
         "identical greedy replies"),
        (["--model", str(tiny_model_dir), "--input", str(prompts), "--output", str(prompts)], "must not be"),
    ]
    for argv, message in cases:
        assert infer.main(argv) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse: a required argument missing
        infer.main(["--model", str(tiny_model_dir)])
    assert e.value.code == 2
    assert not out.exists()


def test_resume_skips_written_rows_and_keeps_columns(tmp_path: Path, tiny_model_dir: Path, prompts: Path) -> None:
    out = tmp_path / "out.jsonl"
    first = Echo()
    res = infer.run(args_for(tiny_model_dir, prompts, out, "--max-rows", "3", "--batch-size", "2"), first)
    assert (res.rows, res.skipped, res.written) == (3, 0, 3) and first.ran == [0, 1, 2]
    with open(out, "ab") as f:  # a run killed in the middle of a write
        f.write(b'{"prompt": "p3", "id"')
    second = Echo()
    res = infer.run(args_for(tiny_model_dir, prompts, out, "--batch-size", "2"), second)
    assert (res.rows, res.skipped, res.written) == (5, 3, 2) and second.ran == [3, 4]
    rows = read_rows(out)
    assert rows == [{"prompt": f"p{i}", "id": i, "meta": {"k": [i]}, "completion": f"{i}p", "finish_reason": "stop"}
                    for i in range(5)]
    third = Echo()  # all done: nothing runs
    assert infer.run(args_for(tiny_model_dir, prompts, out), third).written == 0 and third.ran == []
    fresh = Echo()
    assert infer.run(args_for(tiny_model_dir, prompts, out, "--no-resume"), fresh).written == 5
    assert read_rows(out) == rows


def test_resume_refuses_the_output_of_another_input(tmp_path: Path, tiny_model_dir: Path, prompts: Path) -> None:
    out = tmp_path / "out.jsonl"
    infer.run(args_for(tiny_model_dir, prompts, out, "--max-rows", "2"), Echo())
    other = write_rows(tmp_path / "other.jsonl", [{"prompt": "p0", "id": 0, "meta": {"k": [0]}},
                                                  {"prompt": "changed", "id": 1, "meta": {"k": [1]}}])
    with pytest.raises(DataError, match="line 2: this output line is not input row 2"):
        infer.run(args_for(tiny_model_dir, other, out), Echo())
    with pytest.raises(DataError, match="more than the 1 input rows"):
        infer.run(args_for(tiny_model_dir, prompts, out, "--max-rows", "1"), Echo())
    clash = write_rows(tmp_path / "clash.jsonl", [{"prompt": "p", "completion": "old"}])
    with pytest.raises(DataError, match=r"line 1: input column\(s\) \['completion'\] would be overwritten"):
        infer.run(args_for(tiny_model_dir, clash, tmp_path / "c.jsonl"), Echo())
    bad = write_rows(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"text": "no prompt"}])
    with pytest.raises(DataError, match="line 2: no prompt"):  # every row is checked before any runs
        infer.run(args_for(tiny_model_dir, bad, tmp_path / "b.jsonl"), Echo())
    assert not (tmp_path / "b.jsonl").exists()


def test_causal_lm_prompt_rules(tmp_path: Path, tiny_model_dir: Path) -> None:
    from raylhf.tools.infer_lm import row_prompt

    def row(data: dict[str, Any]) -> Row:
        return Row(data, "in.jsonl", 1)

    turn = [{"role": "user", "content": "hi"}]
    assert row_prompt(row({"prompt": "hi"}), None) == turn
    assert row_prompt(row({"messages": [*turn, {"role": "assistant", "content": "ref"}]}), None) == turn
    assert row_prompt(row({"q": turn}), "q") == turn
    with pytest.raises(DataError, match="no prompt column 'prompt' or 'messages'"):
        row_prompt(row({"text": "x"}), None)
    with pytest.raises(DataError, match="only an assistant turn"):
        row_prompt(row({"messages": [{"role": "assistant", "content": "x"}]}), None)


# ---------------------------------------------------------------------------------------------- encoder parity

class _Engine:
    """What EncoderWorker.outputs / encode use of its DeepSpeed engine: the module, its device, the call."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.device = module, torch.device("cpu")

    def __call__(self, **kw: Any) -> Any:
        return self.module(**kw)

    def eval(self) -> None:
        self.module.eval()


def worker_outputs(model: torch.nn.Module, head: str, seqs: list[list[int]], micro: int, **kw: Any
                   ) -> list[list[float]]:
    """EncoderWorker.encode itself, on a plain model (no Ray, no DeepSpeed)."""
    w = EncoderWorker.__new__(EncoderWorker)
    w.engine, w.head, w.micro = _Engine(model.eval()), head, micro
    w.pooling, w.yes_id, w.no_id = kw.get("pooling", "last"), kw.get("yes_id"), kw.get("no_id")
    return w.encode([torch.tensor(s) for s in seqs])


CHATS = [[{"role": "user", "content": "how are you"}, {"role": "assistant", "content": "fine"}],
         [{"role": "user", "content": "2 + 2"}], [{"role": "system", "content": "be short"},
                                                  {"role": "user", "content": "a much longer question " * 3}]]


def _score(model_dir: Path, rows: list[dict[str, Any]], tmp_path: Path, *extra: str) -> list[dict[str, Any]]:
    inp, out = write_rows(tmp_path / "rows.jsonl", rows), tmp_path / "scored.jsonl"
    assert infer.main(["--model", str(model_dir), "--input", str(inp), "--output", str(out), *extra]) == 0
    return read_rows(out)


def test_seq_cls_scores_equal_the_workers(tmp_path: Path, tiny_model_dir: Path) -> None:
    ckpt = tmp_path / "cls"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3).save_pretrained(ckpt)
    load_tokenizer(tiny_model_dir).save_pretrained(ckpt)
    TaskCard("seq_cls", max_length=24, problem_type="single_label_classification",
             labels=["neg", "neu", "pos"]).save(ckpt)
    rows = [{"messages": CHATS[0], "label": 2}, {"text": "just a text"}, {"messages": CHATS[2], "id": 7}]
    got = _score(ckpt, rows, tmp_path, "--batch-size", "2")
    tok = load_tokenizer(ckpt)
    seqs = [encode_side(tok, CHATS[0], 24), encode_side(tok, [{"role": "user", "content": "just a text"}], 24),
            encode_side(tok, CHATS[2], 24)]
    ref = worker_outputs(AutoModelForSequenceClassification.from_pretrained(ckpt, dtype=torch.float32),
                         "classifier", seqs, micro=2)
    for row, out, want in zip(rows, got, ref, strict=True):
        assert {k: out[k] for k in row} == row  # the input's columns kept
        assert out["scores"] == pytest.approx(want, abs=1e-5)
        assert out["predicted_label"] == ["neg", "neu", "pos"][max(range(3), key=want.__getitem__)]


def test_reranker_scores_follow_the_documents(tmp_path: Path, tiny_model_dir: Path) -> None:
    ckpt = tmp_path / "rr"
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).save_pretrained(ckpt)
    load_tokenizer(tiny_model_dir).save_pretrained(ckpt)
    TaskCard("reranker", max_length=40).save(ckpt)
    rows = [{"query": "where do cats sleep", "documents": ["on the sofa", "stocks fell", "in boxes"]},
            {"messages": [{"role": "user", "content": "q2"}],
             "positive_messages": [[{"role": "user", "content": "d+"}]],
             "negative_messages": [[{"role": "user", "content": "d-1"}], [{"role": "user", "content": "d-2"}]]},
            {"query": "one", "document": "single doc"}]
    got = _score(ckpt, rows, tmp_path)
    tok = load_tokenizer(ckpt)

    def u(s: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": s}]

    pairs = [(u("where do cats sleep"), u(d)) for d in ("on the sofa", "stocks fell", "in boxes")]
    pairs += [(u("q2"), u(d)) for d in ("d+", "d-1", "d-2")] + [(u("one"), u("single doc"))]
    seqs = [encode_pair(tok, q, d, 40) for q, d in pairs]
    ref = [r[0] for r in worker_outputs(AutoModelForSequenceClassification.from_pretrained(ckpt, dtype=torch.float32),
                                        "classifier", seqs, micro=64)]
    assert got[0]["scores"] == pytest.approx(ref[0:3], abs=1e-5)
    assert got[1]["scores"] == pytest.approx(ref[3:6], abs=1e-5)
    assert got[2]["scores"] == pytest.approx(ref[6:], abs=1e-5) and got[2]["score"] == got[2]["scores"][0]


def test_generative_reranker_and_embedding_equal_the_workers(tmp_path: Path, tiny_model_dir: Path) -> None:
    gen = tmp_path / "gen"
    gen.mkdir()
    for f in tiny_model_dir.iterdir():
        (gen / f.name).write_bytes(f.read_bytes())
    template = "Q: {query}\nD: {document}\nRelevant?"
    TaskCard("generative_reranker", max_length=48, template=template, yes_token="yes", no_token="no").save(gen)
    rows = [{"query": "cats", "documents": ["cats sleep a lot", "the market"]}]
    got = _score(gen, rows, tmp_path)
    tok = load_tokenizer(gen)
    seqs = [encode_generative(tok, template, [{"role": "user", "content": "cats"}],
                              [{"role": "user", "content": d}], 48) for d in ("cats sleep a lot", "the market")]
    yes, no = tok("yes", add_special_tokens=False)["input_ids"][0], tok("no", add_special_tokens=False)["input_ids"][0]
    ref = worker_outputs(AutoModelForCausalLM.from_pretrained(gen, dtype=torch.float32), "yes_no", seqs, micro=8,
                         yes_id=yes, no_id=no)
    assert got[0]["scores"] == pytest.approx([r[0] for r in ref], abs=1e-5)

    emb = tmp_path / "emb"
    emb.mkdir()
    for f in tiny_model_dir.iterdir():
        (emb / f.name).write_bytes(f.read_bytes())
    TaskCard("embedding", max_length=32, pooling="mean").save(emb)
    rows = [{"text": "a sentence"}, {"query": CHATS[1]}, {"messages": CHATS[0]}]
    (tmp_path / "e").mkdir()
    got = _score(emb, rows, tmp_path / "e")
    seqs = [encode_side(tok, [{"role": "user", "content": "a sentence"}], 32), encode_side(tok, CHATS[1], 32),
            encode_side(tok, CHATS[0], 32)]
    ref = worker_outputs(AutoModel.from_pretrained(emb, dtype=torch.float32), "embedding", seqs, micro=64,
                         pooling="mean")
    for out, want in zip(got, ref, strict=True):
        assert len(out["embedding"]) == 128
        assert out["embedding"] == pytest.approx(want, abs=1e-5)


def test_seq_cls_prediction_columns() -> None:
    from raylhf.tools.infer_scores import Scorer

    s = Scorer.__new__(Scorer)
    s.card = TaskCard("seq_cls", max_length=8, labels=["a", "b", "c"])
    s.problem = "single_label_classification"
    assert s.columns([[0.1, 2.0, -1.0]], False) == {"scores": [0.1, 2.0, -1.0], "predicted_label": "b"}
    s.problem = "multi_label_classification"
    assert s.columns([[0.1, 2.0, -1.0]], False)["predicted_label"] == ["a", "b"]
    s.card = TaskCard("seq_cls", max_length=8)
    assert s.columns([[0.1, 2.0, -1.0]], False)["predicted_label"] == [0, 1]
    s.problem = "regression"
    assert s.columns([[0.75]], False) == {"score": 0.75}


def test_help_loads_neither_torch_nor_vllm() -> None:
    code = ("import contextlib, io, sys\nfrom raylhf.tools import export, infer\n"
            "for main in (infer.main, export.main):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        main(['--help'])\n"
            "print([m for m in ('torch', 'vllm', 'transformers', 'ray', 'peft') if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
