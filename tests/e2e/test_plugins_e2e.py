"""The run's plugin files reach the actors: a reward registered only by a file in the top-level ``plugins``
(not ``reward.plugins``) is found by name inside a real Ray reward actor, and the driver-side activation of a
later run replaces (does not accumulate) the list the actors get."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raylhf.config.sections import RewardConfig
from raylhf.driver.startup import start_reward
from raylhf.plugins import registry

PLUGIN = '''
from raylhf.plugins import ORM, orms

class CountsSevens(ORM):
    def __call__(self, completions, **kwargs):
        return [float(c.count("7")) for c in completions]

orms["e2e_counts_sevens"] = CountsSevens
'''


def test_a_plugin_reward_is_found_inside_the_reward_actor(local_ray: None, tmp_path: Path) -> None:
    plugin = tmp_path / "sevens.py"
    plugin.write_text(PLUGIN)
    saved = os.environ.pop(registry.ENV, None)
    try:
        assert registry.activate([str(plugin)], replace=True) == [str(plugin.resolve())]
        cfg = RewardConfig(functions=[{"name": "e2e_counts_sevens"}])  # validates: the driver loaded it
        group = start_reward(cfg, {}, call_timeout_s=120)
        try:
            items = [{"prompt": "p", "completion": c, "completion_ids": []} for c in ("77", "1", "7x7x7")]
            out = group.call("score", items)[0]
        finally:
            group.shutdown()
        assert out["per_function"]["e2e_counts_sevens"] == [2.0, 0.0, 3.0]
        assert registry.activate([], replace=True) == [] and registry.ENV not in os.environ
    finally:
        if saved is not None:
            os.environ[registry.ENV] = saved
        else:
            os.environ.pop(registry.ENV, None)


def test_a_missing_plugin_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    from raylhf.config import ConfigError, SFTConfig, load_config

    with pytest.raises(ConfigError, match=r"plugin .*nope\.py: FileNotFoundError: plugin file .*nope\.py does not"):
        load_config(SFTConfig, ["--plugins", str(tmp_path / "nope.py"), "--dry-run"], "raylhf.sft")
