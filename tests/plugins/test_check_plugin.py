"""``raylhf check-plugin`` and the shared loader: what a user sees before a long job."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from raylhf.config import SFTConfig, load_config
from raylhf.plugins import check as check_plugin

ROOT = Path(__file__).resolve().parents[2]


def _report(ref: str) -> tuple[int, str]:
    out = io.StringIO()
    rc = check_plugin.report(ref, out)
    return rc, out.getvalue()


def test_a_good_and_a_wrong_reward_are_told_apart(tmp_path: Path) -> None:
    f = tmp_path / "mixed_rewards.py"
    f.write_text(
        "from raylhf.plugins import ORM, orms, register_orm\n"
        "class Exact(ORM):\n"
        "    def __call__(self, completions, solution, **kwargs):\n"
        "        return [float(c.strip() == s) for c, s in zip(completions, solution)]\n"
        "@register_orm('cp_one_value')\n"
        "def one_value(completions, **kwargs):\n"
        "    return [1.0]\n"
        "orms['cp_exact'] = Exact\n")
    rc, text = _report(str(f))
    assert rc == 1
    assert "ok   reward 'cp_exact'" in text and "returned [1.0, 0.0]" in text
    assert "FAIL reward 'cp_one_value'" in text and "returned 1 values for 2 completions" in text
    assert "expected a function f(completions, **kwargs)" in text
    assert "2 entries checked: 1 ok, 1 failed" in text


def test_load_errors_and_empty_files(tmp_path: Path) -> None:
    rc, text = _report(str(tmp_path / "absent.py"))
    assert rc == 2 and "cannot load: FileNotFoundError" in text
    broken = tmp_path / "broken_plugin.py"
    broken.write_text("x = 1\nraise RuntimeError('boom at import')\n")
    rc, text = _report(str(broken))
    assert rc == 2 and "RuntimeError: boom at import" in text and "broken_plugin.py:2" in text
    empty = tmp_path / "empty_plugin.py"
    empty.write_text("VALUE = 3\n")
    rc, text = _report(str(empty))
    assert rc == 1 and "registers nothing" in text and "optimizers_map" in text


def test_a_reward_given_as_file_function_is_checked() -> None:
    rc, text = _report(str(ROOT / "examples/rewards/brevity.py") + ":brevity")
    assert rc == 0 and "orm on 2 synthetic completions returned [1.0, 1.0]" in text


def test_cli_subcommand_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from raylhf.cli import main

    assert main(["check-plugin", str(ROOT / "examples/rewards/arithmetic_prm.py")]) == 0
    assert "prm on 2 synthetic completions" in capsys.readouterr().out
    assert main(["check-plugin"]) == 2


def test_plugins_flag_is_repeatable_and_adds_to_the_config_files(tmp_path: Path) -> None:
    a, b, c = (tmp_path / f"{n}_plugin.py" for n in "abc")
    for p in (a, b, c):
        p.write_text("VALUE = 1\n")
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(f"plugins: [{a}]\n")
    cfg = load_config(SFTConfig, ["--config", str(cfg_file), "--plugins", str(b), "--plugins", str(c)], "x")
    assert cfg is not None and cfg.plugins == [str(a), str(b), str(c)]


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples/plugins").glob("*.py")))
def test_every_shipped_example_plugin_passes_check_plugin(example: str) -> None:
    rc, text = _report(str(ROOT / "examples/plugins" / example))
    assert rc == 0, text
    assert "0 failed" in text
