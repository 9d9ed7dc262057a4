"""Dataset loading, validation and tokenisation for every algorithm family.

Sources (``data.train_files`` / ``data.eval_files``):

* ``.jsonl`` files (one JSON object per line; blank lines are skipped),
* ``.json`` files (an array of objects, ``{"data": [...]}``-style wrappers, or JSON Lines),
* ``.parquet`` / ``.pq`` files,
* directories written by ``datasets.Dataset.save_to_disk`` (a ``DatasetDict`` uses its ``train`` split
  or its only split), or plain directories holding the files above,
* Hugging Face hub ids (``name``, ``name:split`` or ``name:config:split``) when the string is neither an
  existing local path nor looks like a file path.

Row formats (after the ``data.columns`` renaming, canonical name -> name in your data):

* ``messages``: a chat ``messages`` list of ``{role, content}`` turns,
* ``prompt``: a ``prompt`` (string or message list) plus extra columns (RL; extras such as ``solution``
  travel to the reward functions),
* ``sft``: ``prompt`` + ``response``,
* ``preference``: ``chosen`` + ``rejected`` (strings or message lists) with an optional ``prompt``.

Every problem in the data is reported eagerly, on load, as one :class:`DataError` that names the file,
the row (the line for JSON Lines, 1-based) and the problem, so workers never crash on bad rows later.

Layers and where new code goes: docs/architecture.md.
"""

from raylhf.data.formats import apply_column_mapping, detect_format
from raylhf.data.loaders import (
    load_from_config,
    load_preference_dataset,
    load_prompt_dataset,
    load_sft_dataset,
)
from raylhf.data.readers import load_records
from raylhf.data.render import drop_long_prompts, end_of_turn_id, render_prompt, tokenize_sft
from raylhf.data.types import (
    FORMATS,
    ROLES,
    DataError,
    Messages,
    PreferenceExample,
    PromptExample,
    SFTExample,
)

__all__ = [
    "FORMATS",
    "ROLES",
    "DataError",
    "Messages",
    "PreferenceExample",
    "PromptExample",
    "SFTExample",
    "apply_column_mapping",
    "detect_format",
    "drop_long_prompts",
    "end_of_turn_id",
    "load_from_config",
    "load_preference_dataset",
    "load_prompt_dataset",
    "load_records",
    "load_sft_dataset",
    "render_prompt",
    "tokenize_sft",
]
