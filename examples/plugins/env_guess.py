"""An environment written for ms-swift (``swift.plugin.env``): it loads unchanged in raylhf.

Number guessing: the env keeps a secret (the data row's ``solution``), the model guesses, the env answers
"higher" / "lower" and pays a reward when the guess is right (plus a small one for each guess that narrows the
range). Select it with ``agent.env: guess`` (examples/configs/grpo_env_guess.yaml); check it first with
``raylhf check-plugin examples/plugins/env_guess.py``.
"""

import re

from swift.plugin import Env, envs


class GuessEnv(Env):
    def __init__(self, env_config):
        super().__init__(env_config)
        self.low = int(env_config.get("low", 0))
        self.high = int(env_config.get("high", 100))

    async def reset(self, config):
        self.secret = int(float(config.data_dict.get("solution", 0)))
        self.lo, self.hi = self.low, self.high
        system = f"Guess the whole number between {self.low} and {self.high}. Answer with one number per turn."
        return "", {"secret": self.secret}, system

    async def step(self, messages):
        found = re.findall(r"-?\d+", messages[-1]["content"])
        if not found:
            return "Say a number.", 0.0, False, {}
        guess = int(found[-1])
        if guess == self.secret:
            return "Correct!", 1.0, True, {}
        narrowed = self.lo < guess < self.hi
        if guess < self.secret:
            self.lo = max(self.lo, guess)
        else:
            self.hi = min(self.hi, guess)
        return ("higher" if guess < self.secret else "lower"), 0.1 if narrowed else 0.0, False, {}

    async def close(self):
        pass


envs["guess"] = GuessEnv
