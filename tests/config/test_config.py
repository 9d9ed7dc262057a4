"""Config system: layering, overrides, unknown keys, cross-field rules, help, every shipped YAML."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raylhf.config import CONFIGS, ConfigError, GRPOConfig, SFTConfig, build_config
from raylhf.config.loader import help_text, parse_argv

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_validate() -> None:
    cfg = GRPOConfig()
    assert cfg.rollout.temperature == 1.0
    assert cfg.grpo.samples_per_prompt >= 2


def test_layered_yaml_and_overrides(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("rollout: {temperature: 0.5, top_p: 0.9}\ngrpo: {kl_coef: 0.1}\n")
    b.write_text("rollout: {temperature: 0.7}\n")
    args = parse_argv(["--config", str(a), "--config", str(b), "--grpo.kl_coef", "0.2", "seed=7"])
    cfg = build_config(GRPOConfig, args.config_files, args.overrides)
    assert cfg.rollout.temperature == 0.7  # b wins over a
    assert cfg.rollout.top_p == 0.9  # kept from a
    assert cfg.grpo.kl_coef == 0.2  # CLI wins over files
    assert cfg.seed == 7


@pytest.mark.parametrize(
    "argv",
    [["--rollout.temperature", "0.25"], ["--rollout.temperature=0.25"], ["rollout.temperature=0.25"]],
)
def test_override_forms(argv: list[str]) -> None:
    args = parse_argv(argv)
    assert build_config(GRPOConfig, overrides=args.overrides).rollout.temperature == 0.25


def test_override_parses_lists_and_null() -> None:
    args = parse_argv(["--data.train_files", "[a.jsonl, b.jsonl]", "--grpo.tis_cap", "null"])
    cfg = build_config(GRPOConfig, overrides=args.overrides)
    assert cfg.data.train_files == ["a.jsonl", "b.jsonl"]
    assert cfg.grpo.tis_cap is None


def test_unknown_key_suggests() -> None:
    with pytest.raises(ConfigError, match=r"rollout\.temprature.*did you mean 'rollout\.temperature'"):
        build_config(GRPOConfig, overrides=[("rollout.temprature", 1)])


def test_unknown_key_in_file_names_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("polcy:\n  lr: 1.0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*did you mean 'policy'"):
        build_config(GRPOConfig, [str(f)])


def test_type_error_names_field() -> None:
    with pytest.raises(ConfigError, match=r"'rollout\.temperature'.*got 'hot'"):
        build_config(GRPOConfig, overrides=[("rollout.temperature", "hot")])


def test_batch_divisibility_names_both_fields() -> None:
    with pytest.raises(ConfigError) as e:
        build_config(GRPOConfig, overrides=[("grpo.prompt_batch_size", 4), ("grpo.samples_per_prompt", 8),
                                            ("grpo.train_batch_size", 12)])
    msg = str(e.value)
    assert "grpo.train_batch_size (12)" in msg and "grpo.samples_per_prompt" in msg and "32" in msg


def test_train_batch_must_hold_whole_groups() -> None:
    with pytest.raises(ConfigError, match="whole groups"):
        build_config(GRPOConfig, overrides=[("grpo.prompt_batch_size", 4), ("grpo.samples_per_prompt", 4),
                                            ("grpo.train_batch_size", 2)])


def test_workers_must_divide_train_batch() -> None:
    with pytest.raises(ConfigError, match=r"policy\.num_workers \(3\)"):
        build_config(GRPOConfig, overrides=[("policy.num_workers", 3)])


def test_tiny_head_dim_rule() -> None:
    with pytest.raises(ConfigError, match="head_dim"):
        build_config(GRPOConfig, overrides=[("model.tiny.num_heads", 16)])


def test_tiny_kv_heads_must_divide_heads() -> None:
    with pytest.raises(ConfigError) as e:
        build_config(GRPOConfig, overrides=[("model.tiny.num_kv_heads", 3)])
    msg = str(e.value)
    assert "model.tiny" in msg and "num_heads (4)" in msg and "num_kv_heads (3)" in msg


@pytest.mark.parametrize("advantage", ["grpo", "rloo"])
def test_group_advantages_need_two_samples_per_prompt(advantage: str) -> None:
    with pytest.raises(ConfigError) as e:
        build_config(GRPOConfig, overrides=[("grpo.advantage", advantage), ("grpo.samples_per_prompt", 1),
                                            ("grpo.train_batch_size", None)])
    msg = str(e.value)
    assert f"grpo.advantage={advantage}" in msg and "grpo.samples_per_prompt >= 2" in msg
    # a per-sample baseline needs no group
    cfg = build_config(GRPOConfig, overrides=[("grpo.advantage", "reinforce++"), ("grpo.samples_per_prompt", 1),
                                              ("grpo.train_batch_size", None)])
    assert cfg.grpo.samples_per_prompt == 1


def test_overlong_buffer_must_fit_in_max_new_tokens() -> None:
    over = [("grpo.overlong", "penalty"), ("rollout.max_new_tokens", 32)]
    with pytest.raises(ConfigError) as e:
        build_config(GRPOConfig, overrides=[*over, ("grpo.overlong_buffer", 32)])
    msg = str(e.value)
    assert "grpo.overlong_buffer (32)" in msg and "rollout.max_new_tokens (32)" in msg
    assert build_config(GRPOConfig, overrides=[*over, ("grpo.overlong_buffer", 31)]).grpo.overlong_buffer == 31
    # the buffer only matters for the penalty
    cfg = build_config(GRPOConfig, overrides=[("grpo.overlong", "mask"), ("rollout.max_new_tokens", 32),
                                              ("grpo.overlong_buffer", 32)])
    assert cfg.grpo.overlong == "mask"


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(GRPOConfig, [str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(GRPOConfig, [str(bad)])


def test_help_lists_every_field_with_doc() -> None:
    text = help_text(GRPOConfig, "raylhf.grpo")
    for path in ("rollout.temperature", "grpo.kl_coef", "model.tiny.hidden_size", "reward.functions"):
        assert path in text
    assert "sampling temperature" in text


@pytest.mark.parametrize("path", sorted((ROOT / "examples").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    from raylhf.config import config_class

    cls = config_class(path.stem)
    assert cls is not None, f"{path}: name example configs <algo>_*.yaml with algo in {sorted(CONFIGS)} or serve"
    cfg = build_config(cls, [str(path)])
    files = cfg.data.train_files if hasattr(cfg, "data") else []
    for f in files:
        if not f.startswith(("Qwen/", "hf://")):
            assert (ROOT / f).exists(), f"{path}: data file {f} does not exist"


def test_cli_dry_run_and_typo_subprocess() -> None:
    ok = subprocess.run([sys.executable, "-m", "raylhf.grpo", "--dry-run"], capture_output=True, text=True,
                        cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(ok.stdout)["rollout"]["temperature"] == 1.0
    bad = subprocess.run([sys.executable, "-m", "raylhf.grpo", "--rollout.temprature", "1"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0
    assert "rollout.temperature" in bad.stderr
    sft = subprocess.run([sys.executable, "-m", "raylhf.cli", "sft", "--dry-run"], capture_output=True,
                         text=True, cwd=ROOT)
    assert sft.returncode == 0 and "sft:" in sft.stdout, sft.stderr


def test_sft_config_rules() -> None:
    with pytest.raises(ConfigError, match=r"sft\.batch_size"):
        build_config(SFTConfig, overrides=[("policy.num_workers", 3)])


def test_demo_yaml_spells_out_the_defaults() -> None:
    spelled = build_config(GRPOConfig, [str(ROOT / "examples/configs/grpo_demo.yaml")])
    assert spelled == GRPOConfig()


def test_partial_section_keeps_the_parents_defaults() -> None:
    cfg = build_config(GRPOConfig, overrides=[("policy.lr", 1e-6)])
    assert cfg.policy.lr == 1e-6
    assert cfg.policy.micro_batch_size == GRPOConfig().policy.micro_batch_size == 32  # not PolicyConfig's 8
    assert cfg.reward == GRPOConfig().reward


def test_cli_bad_data_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "solution": "1"}\n{"prompt": "b", "solution": "2"}\n{broken\n')
    r = subprocess.run([sys.executable, "-m", "raylhf.grpo", "--data.train_files", f"[{bad}]"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert f"{bad}, line 3" in r.stderr and "Traceback" not in r.stderr


def test_reward_section_rules() -> None:
    remote = {"name": "judge", "url": "http://127.0.0.1:9/score"}
    cfg = build_config(GRPOConfig, overrides=[("reward.functions", []), ("reward.remote", [remote])])
    r = cfg.reward.remote[0]
    assert (r.kind, r.protocol, r.weight, r.on_failure) == ("orm", "raylhf", 1.0, "raise")
    with pytest.raises(ConfigError, match="no reward configured"):
        build_config(GRPOConfig, overrides=[("reward.functions", [])])
    with pytest.raises(ConfigError, match="must start with http"):
        build_config(GRPOConfig, overrides=[("reward.remote", [{"name": "x", "url": "127.0.0.1:9"}])])
    with pytest.raises(ConfigError, match=r"unique.*judge"):
        build_config(GRPOConfig, overrides=[("reward.remote", [remote, remote])])
    with pytest.raises(ConfigError, match="on_failure"):
        build_config(GRPOConfig, overrides=[("reward.remote", [{**remote, "on_failure": "ignore"}])])
