"""Custom SFT losses (``sft.loss``, raylhf/algos/sft_losses.py): the example plugin's formulas on hand-made logits, the
``default`` function against the objective's cross-entropy, the SFTWorker's custom path against the
PolicyWorker's on a tiny model, ``num_items_in_batch`` across micro-batches, check-plugin and the config
errors. No Ray."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from raylhf.algos.sft_losses import (
    LOSS_FUNCS,
    check_plugin_entry,
    collect_losses,
    get_loss_func,
    register_loss_func,
)
from raylhf.config import GRPOConfig, SFTConfig, build_config
from raylhf.config.dpo import DPOConfig
from raylhf.config.loader import ConfigError
from raylhf.core.batch import Objective
from raylhf.core.objective import objective_loss
from raylhf.plugins import registry
from raylhf.plugins.registry import PluginCheckError, load_plugin

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "plugins" / "loss_focal.py"

# B=1, T=3, V=2. Position 0: logits [0, ln 3] -> p = [1/4, 3/4]; position 1: [0, 0] -> p = [1/2, 1/2].
# labels [-100, 1, 0]: position 0 predicts token 1 (p = 3/4), position 1 predicts token 0 (p = 1/2).
LOGITS = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0], [5.0, -5.0]]])
LABELS = torch.tensor([[-100, 1, 0]])
P = [3 / 4, 1 / 2]  # the probabilities of the two targets
SCALE = torch.tensor([[0.0, 2.0, 1.0]])  # loss_scale aligned with labels: the first target weighs 2


@pytest.fixture(scope="module", autouse=True)
def _unload_afterwards() -> Iterator[None]:
    """Leave no trace for later test modules: the example's entries, the loaded module, RAYLHF_PLUGINS."""
    env = os.environ.get(registry.ENV)
    yield
    for name in ("focal", "label_smoothing"):
        LOSS_FUNCS.unregister(name)
    unload_plugin_file(EXAMPLE)
    if env is None:
        os.environ.pop(registry.ENV, None)
    else:
        os.environ[registry.ENV] = env


def unload_plugin_file(path: Path) -> None:
    registry.forget(str(path))


@pytest.fixture(scope="module")
def example() -> None:
    load_plugin(str(EXAMPLE))


def run(name: str, scale: torch.Tensor | None = None, n: float | None = 2) -> float:
    logits = LOGITS.clone().requires_grad_(True)
    out = LOSS_FUNCS[name](SimpleNamespace(logits=logits), LABELS, loss_scale=scale, num_items_in_batch=n)
    assert out.dim() == 0 and out.requires_grad
    return float(out.detach())


def test_focal_loss_equals_its_formula(example: None) -> None:
    """focal = -(1 - p)^2 log p: (1/4)^2 ln(4/3) = 0.017980 and (1/2)^2 ln 2 = 0.173287."""
    tok = [(1 - p) ** 2 * -math.log(p) for p in P]
    assert tok[0] == pytest.approx(0.017980, abs=1e-6) and tok[1] == pytest.approx(0.173287, abs=1e-6)
    assert run("focal") == pytest.approx((tok[0] + tok[1]) / 2, rel=1e-6)  # 0.095634
    assert run("focal", SCALE) == pytest.approx((2 * tok[0] + tok[1]) / 2, rel=1e-6)
    assert run("focal", n=None) == pytest.approx((tok[0] + tok[1]) / 2, rel=1e-6)  # mean over trained tokens
    assert run("focal") < run("default")  # focal down-weights every token: (1 - p)^2 < 1


def test_label_smoothing_from_the_loss_mapping_table_equals_its_formula(example: None) -> None:
    """(1 - 0.1) * -log p(target) + 0.1 * mean_v -log p(v); V = 2."""
    assert "label_smoothing" in LOSS_FUNCS and LOSS_FUNCS.source("label_smoothing").endswith("(loss_mapping)")
    tok0 = 0.9 * math.log(4 / 3) + 0.1 * (math.log(4) + math.log(4 / 3)) / 2  # 0.342613
    tok1 = 0.9 * math.log(2) + 0.1 * math.log(2)  # 0.693147
    assert run("label_smoothing") == pytest.approx((tok0 + tok1) / 2, rel=1e-6)  # 0.517880
    assert run("label_smoothing") == pytest.approx(0.517880, abs=1e-6)


def test_default_is_the_objectives_weighted_cross_entropy() -> None:
    """default = sum(w * -log p) / num_items: (2 ln(4/3) + ln 2) / 2 = 0.634257 with the scale."""
    assert run("default", SCALE) == pytest.approx((2 * math.log(4 / 3) + math.log(2)) / 2, rel=1e-6)
    # the objective on the same tokens: logp at position t of the target token t (position 0 is 0)
    logp = torch.tensor([[0.0, math.log(3 / 4), math.log(1 / 2)]])
    mask = (LABELS != -100).float()
    obj = Objective(pg_coef=0.0, ce_coef=1.0, global_tokens=2.0)
    _, m = objective_loss(logp, None, mask, obj, ce_weights=SCALE)
    assert run("default", SCALE) == pytest.approx(m["loss/ce"], rel=1e-6)


def test_micro_batch_sums_add_up_to_the_step_token_mean() -> None:
    """Two micro-batches, each divided by the step's trained tokens (3): their sum is the mean over all 3."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 7, generator=gen)
    labels = torch.tensor([[-100, -100, 3, 5], [-100, 2, -100, -100]])
    whole = LOSS_FUNCS["default"](SimpleNamespace(logits=logits), labels)  # mean over its 3 trained tokens
    parts = [LOSS_FUNCS["default"](SimpleNamespace(logits=logits[i:i + 1]), labels[i:i + 1], num_items_in_batch=3)
             for i in range(2)]
    assert float(parts[0] + parts[1]) == pytest.approx(float(whole), rel=1e-6)


def test_sft_worker_custom_path_matches_the_policy_worker(tiny_model_dir: Path) -> None:
    """The SFTWorker's unpacked forward + the registered ``default`` function gives the PolicyWorker's loss and
    gradient on the same weighted micro-batch (the custom path is the same objective); focal differs."""
    from actors.common import forward_logprobs, load_causal_lm, pad
    from actors.policy import PolicyWorker
    from actors.sft_worker import SFTWorker
    from raylhf.trainers.sft import collate

    model = load_causal_lm(str(tiny_model_dir), torch.float32)
    rows = [([5, 9, 11, 40, 41, 42, 7], [0.0, 0.0, 1.0, 2.0, 1.0, 0.5, 1.0]), ([8, 3, 60, 61], [0.0, 1.0, 1.0, 1.0])]
    batch = collate(rows)
    obj = Objective(pg_coef=0.0, ce_coef=1.0).with_counts(batch)

    def loss_and_grad(worker: PolicyWorker) -> tuple[float, torch.Tensor]:
        worker.engine, worker.cfg = model, {}  # type: ignore[attr-defined]
        model.zero_grad()
        loss, m, weight = worker.micro_loss(batch, obj)
        loss.backward()
        assert weight == 8.0 and m["loss/ce"] == pytest.approx(float(loss.detach()))
        return float(loss.detach()), model.get_input_embeddings().weight.grad.clone()

    ref_loss, ref_grad = loss_and_grad(PolicyWorker())
    custom = SFTWorker(sft_loss="default")
    custom._loss_fn = LOSS_FUNCS["default"]  # force the custom path with the built-in function
    loss, grad = loss_and_grad(custom)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert torch.allclose(grad, ref_grad, atol=1e-6, rtol=1e-4)
    assert SFTWorker(sft_loss="default")._loss_fn is None  # sft.loss=default keeps the PolicyWorker path
    load_plugin(str(EXAMPLE))
    focal, _ = loss_and_grad(SFTWorker(sft_loss="focal"))
    with torch.no_grad():  # by hand: sum(w * (1 - p)^2 * -log p) / 8 trained tokens
        logp, _, _ = forward_logprobs(model, batch.input_ids)
        w = pad(batch.ce_weights, 0.0) * pad(batch.loss_mask, 0.0)
        expected = float((w * (1 - logp.exp()) ** 2 * -logp).sum() / 8)
    assert focal == pytest.approx(expected, rel=1e-5)
    assert focal < ref_loss


def test_check_plugin_accepts_the_examples_and_rejects_wrong_shapes(example: None) -> None:
    for name in ("default", "focal", "label_smoothing"):
        assert "scalar with grad" in check_plugin_entry(name, LOSS_FUNCS[name])

    def two_args(outputs, labels):  # ms-swift 2.x shape without loss_scale / num_items_in_batch
        return outputs.logits.sum()

    with pytest.raises(PluginCheckError, match=r"loss 'old'.*two_args\(outputs, labels\).*expected f\(outputs, "
                       r"labels, loss_scale=None, num_items_in_batch=None\) -> scalar Tensor"):
        check_plugin_entry("old", two_args)
    with pytest.raises(PluginCheckError, match=r"loss 'per_token' returned a tensor of shape \(2, 4\); expected f\("):
        check_plugin_entry("per_token", lambda outputs, labels, loss_scale=None, num_items_in_batch=None:
                           outputs.logits[:, 1:].logsumexp(-1))
    with pytest.raises(PluginCheckError, match="without grad"):
        check_plugin_entry("detached", lambda outputs, labels, **kw: outputs.logits.sum().detach())
    with pytest.raises(PluginCheckError, match="not callable"):
        check_plugin_entry("number", 3)


def test_check_plugin_cli_reports_the_example_file() -> None:
    proc = subprocess.run([sys.executable, "-m", "raylhf.check_plugin", str(EXAMPLE)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok   loss 'focal'" in proc.stdout and "ok   loss 'label_smoothing'" in proc.stdout
    assert "2 entries checked: 2 ok" in proc.stdout


def test_registry_rules(example: None) -> None:
    with pytest.raises(ValueError, match="loss 'focal' is registered twice"):
        register_loss_func("focal", lambda outputs, labels, loss_scale=None, num_items_in_batch=None: 0)
    with pytest.raises(TypeError, match=r"loss_mapping.*must be a dict"):
        collect_losses([1], "f.py (loss_mapping)")
    with pytest.raises(ValueError, match=r"unknown loss 'nope' in sft\.loss; registered: default, focal"):
        get_loss_func("nope")


def test_config_validates_sft_loss_and_points_other_trainers_at_their_options() -> None:
    cfg = build_config(SFTConfig, overrides=[("plugins", [str(EXAMPLE)]), ("sft.loss", "focal")])
    assert cfg.sft.loss == "focal"
    with pytest.raises(ConfigError, match=r"'sft\.loss': unknown loss 'focul' in sft\.loss; registered: default"):
        build_config(SFTConfig, overrides=[("sft.loss", "focul")])
    with pytest.raises(ConfigError, match=r"'dpo\.loss'.*apply to SFT only.*dpo\.loss_type"):
        build_config(DPOConfig, overrides=[("dpo.loss", "focal")])
    with pytest.raises(ConfigError, match=r"'loss'.*apply to SFT only.*grpo\.loss_agg"):
        build_config(GRPOConfig, overrides=[("loss", "focal")])
    with pytest.raises(ConfigError, match=r"unknown config key 'loss'.*the token loss is 'sft\.loss'"):
        build_config(SFTConfig, overrides=[("loss", "focal")])
