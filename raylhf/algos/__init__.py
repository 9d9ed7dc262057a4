"""Pure tensor algorithms for post-training: advantages, policy / value / preference / token losses, KL
estimators and loss aggregation.

No config objects, no distributed calls, no Python loops over tokens: tensors (and plain numbers) in,
a loss (per token, per example, or scalar) plus a ``dict[str, float]`` of metrics out.

Layers and where new code goes: docs/architecture.md.
"""

from raylhf.algos.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageResult,
    GAEResult,
    compute_advantages,
    discounted_returns,
    gae,
    grpo_advantages,
    outcome_to_token_rewards,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    reinforce_pp_token_advantages,
    rloo_advantages,
)
from raylhf.algos.aggregate import LOSS_AGG_MODES, aggregate, count_tokens_and_seqs
from raylhf.algos.dpo import (
    bradley_terry_loss,
    cpo_loss,
    dpo_loss,
    kto_loss,
    kto_reference_point,
    log1mexp,
    orpo_loss,
    simpo_loss,
)
from raylhf.algos.is_correction import IS_MODES, is_weights
from raylhf.algos.kl import KL_ESTIMATORS, kl_penalty, kl_reward_penalty
from raylhf.algos.policy_loss import entropy_from_logits, policy_loss
from raylhf.algos.token_losses import (
    clipped_value_loss,
    cross_entropy_per_token,
    generalized_jsd,
    generalized_jsd_per_token,
    token_logprobs,
    weighted_cross_entropy,
)
from raylhf.algos.utils import masked_mean, masked_sum, masked_var, masked_whiten

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "IS_MODES",
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "AdvantageResult",
    "GAEResult",
    "aggregate",
    "bradley_terry_loss",
    "clipped_value_loss",
    "compute_advantages",
    "count_tokens_and_seqs",
    "cpo_loss",
    "cross_entropy_per_token",
    "discounted_returns",
    "dpo_loss",
    "entropy_from_logits",
    "gae",
    "generalized_jsd",
    "generalized_jsd_per_token",
    "grpo_advantages",
    "is_weights",
    "kl_penalty",
    "kl_reward_penalty",
    "kto_loss",
    "kto_reference_point",
    "log1mexp",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "orpo_loss",
    "outcome_to_token_rewards",
    "policy_loss",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "reinforce_pp_token_advantages",
    "rloo_advantages",
    "simpo_loss",
    "token_logprobs",
    "weighted_cross_entropy",
]
