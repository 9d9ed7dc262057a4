"""Over-provisioned dynamic sampling (DAPO's dynamic sampling without a fixed over-sampling factor).

A group whose samples all got the same reward has zero advantage and teaches nothing. With
``grpo.dynamic_sampling`` (on-policy), :func:`sample_varied` keeps the engines busy until the step has
``need`` groups with varied rewards:

* the step's prompts are submitted, one group (prompt x ``n`` samples) per call; each group is scored as soon as
  it is its turn, in *submission order*;
* whenever the groups not decided yet could no longer fill the batch even if all of them were varied, the next
  round of prompts is drawn from the data stream and submitted (at most ``max_rounds`` rounds in all);
* the first ``need`` varied groups in submission order are accepted; every group after the last one accepted is
  aborted on the engines (its requests stop where they are; the tokens it had are ``rollout/aborted_tokens``);
* after ``max_rounds`` rounds without enough, the step trains on the varied groups it has, with a warning (with
  none at all it returns the step's first groups, which have zero advantage: the update is skipped).

Reproducible under the engines' determinism rule: group ``k`` of the step samples with the step's phase seed and
prompt index ``k`` (its submission position), and acceptance depends only on submission order, never on which
engine finished first.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from raylhf.core.batch import Rollout
from raylhf.driver.phases import Scores, merge_scores


@dataclass
class Group:
    index: int  # submission position in the step (the prompt index its seeds use)
    prompt: Any
    pending: Any  # what ``submit`` returned; ``.result()``: the group's rollouts
    rollouts: list[Rollout] = field(default_factory=list)


@dataclass
class Varied:
    """The accepted groups of a step: rollouts (``prompt_index`` renumbered 0..k-1 in acceptance order), their
    prompts, their scores, and the sampling metrics."""

    rollouts: list[Rollout]
    prompts: list[Any]
    scores: Scores
    metrics: dict[str, float]


def sample_varied(first: list[tuple[Any, list[int]]], draw: Callable[[], list[tuple[Any, list[int]]]],
                  submit: Callable[[list[int], int], Any], score: Callable[[list[Rollout], list[Any]], Scores],
                  abort: Callable[[], None], need: int, n: int, max_rounds: int) -> Varied:
    """``first``: the step's (prompt, token ids); ``draw()``: the next round's; ``submit(ids, index)``: start one
    group's ``n`` samples (prompt index ``index``), returning an object whose ``result()`` is its rollouts;
    ``score(rollouts, [prompt])``: one group's scores; ``abort()``: stop every group of the step still running."""
    groups: list[Group] = []
    rounds = 0

    def submit_round(batch: list[tuple[Any, list[int]]]) -> None:
        nonlocal rounds
        rounds += 1
        for prompt, ids in batch:
            groups.append(Group(len(groups), prompt, submit(ids, len(groups))))

    submit_round(first)
    accepted: list[tuple[Group, Scores]] = []
    agreeing: list[tuple[Group, Scores]] = []
    rejected = 0
    i = 0
    while len(accepted) < need:
        if len(accepted) + (len(groups) - i) < need and rounds < max_rounds:
            submit_round(draw())  # what is in flight cannot fill the batch any more: over-provision now
        if i == len(groups):
            warnings.warn(f"dynamic sampling: {len(accepted)} of the {need} groups with varied rewards after "
                          f"grpo.max_sampling_rounds={max_rounds} rounds ({len(groups)} prompts); the step trains on "
                          "those (raise grpo.max_sampling_rounds, or check the rewards: most groups agree)",
                          stacklevel=2)
            break
        g = groups[i]
        g.rollouts = [r for part in g.pending.result() for r in part]
        for r in g.rollouts:
            r.prompt_index = 0
        s = score(g.rollouts, [g.prompt])
        finite = s.total[~torch.isnan(s.total)]
        if len(finite) > 1 and float(finite.std()) > 0:
            accepted.append((g, s))
        else:
            rejected += 1
            agreeing.append((g, s))
        i += 1
    if not accepted:  # no group varied: the step's first groups, which the update then skips (zero advantage)
        accepted = agreeing[:need]
    surplus = groups[i:]
    if surplus:
        abort()
    aborted = 0
    for g in surplus:  # they return at once, with the tokens they had
        aborted += sum(len(r.response_ids) for part in g.pending.result() for r in part)
    rollouts, prompts = [], []
    for k, (g, _) in enumerate(accepted):
        for r in g.rollouts:
            r.prompt_index = k
        rollouts += g.rollouts
        prompts.append(g.prompt)
    metrics = {"rollout/aborted_tokens": float(aborted), "rollout/sampling_rounds": float(rounds),
               "rollout/groups_rejected": float(rejected), "rollout/groups_aborted": float(len(surplus))}
    return Varied(rollouts, prompts, merge_scores([s for _, s in accepted]), metrics)
