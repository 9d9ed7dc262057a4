"""Word-weighting loss scales (``sft.loss_scale``): the tokens that matter train with weight 2.0.

    python -m raylhf.sft --plugins examples/plugins/loss_scale_keywords.py --sft.loss_scale digits

``get_loss_scale(context, context_type, is_last_round, *, query=None)`` returns the context cut into pieces
and one weight per piece; the pieces must join back to the context. Each piece is tokenized on its own and
its tokens get its weight (0 masks them out of the loss).
"""

import re

from raylhf.plugins import ContextType, LossScale, register_loss_scale

NUMBER = re.compile(r"\d+")


@register_loss_scale("digits")
class DigitsLossScale(LossScale):
    """Every number in an assistant reply weighs 2.0 (the answer of an arithmetic chat), its other text 1.0;
    the end-of-turn token 1.0, prompts 0."""

    def get_loss_scale(self, context, context_type, is_last_round, *, query=None):
        if context_type != ContextType.RESPONSE:
            return super().get_loss_scale(context, context_type, is_last_round, query=query)
        pieces, weights, pos = [], [], 0
        for m in NUMBER.finditer(context):
            pieces += [context[pos:m.start()], m.group(0)]
            weights += [1.0, 2.0]
            pos = m.end()
        pieces.append(context[pos:])
        weights.append(1.0)
        return pieces, weights


class KeywordLossScale(LossScale):
    """ms-swift's JSON-config style as a class attribute: a keyword -> [weight of the keyword, weight of the
    text after it up to the next keyword]; a key with one weight is a regular expression."""

    loss_scale_map = {  # noqa: RUF012  (a class-level table, as in ms-swift)
        "Answer:": [2.0, 2.0],  # the answer line weighs double
        "Note:": [0.0, 0.0],  # side remarks do not train
    }


# the table form (ms-swift's loss_scale_map): name -> LossScale subclass
loss_scale_map = {"answer_keywords": KeywordLossScale}
