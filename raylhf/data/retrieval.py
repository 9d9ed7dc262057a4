"""Rows of the encoder-style trainers (``seq_cls``, ``embedding``, ``reranker``, ``generative_reranker``), read
and checked on load, and how each side is tokenized; plus the task card (``raylhf_task.json``) their exports
carry, so ``raylhf infer`` / ``raylhf eval`` score a checkpoint exactly as its trainer did.

Row shapes (after the ``data.columns`` renaming):

* ``seq_cls``: ``messages`` (or ``text`` / ``query`` / ``prompt``, a string) and ``label``: a class id
  (single label), a list of 0/1 or class ids (multi label), or a number (regression).
* ``embedding`` / ``reranker`` / ``generative_reranker``, ms-swift's two shapes:
  ``messages`` + ``positive_messages`` (a list of message lists) + ``negative_messages`` (3.8 on), or
  ``query`` + ``response`` + ``rejected_response`` (a string or a list of strings; before 3.8). An optional
  ``label`` (a number) is the pair's similarity for the pair losses of ``embedding``.

A side given as a string is one user turn. Every side is rendered with the tokenizer's chat template and cut to
its last ``max_length`` tokens (classification heads read the last token). A reranker scores the conversation
query turns + the document as the assistant turn; a generative reranker scores its prompt template filled with
the query and document texts, rendered as one user turn with the generation prompt.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raylhf.data.formats import check_messages, prompt_messages
from raylhf.data.loaders import renamed_sources
from raylhf.data.render import chat_text, encode_text
from raylhf.data.types import DataError, Messages, Row, type_name

TASK_CARD = "raylhf_task.json"
TASKS = ("seq_cls", "embedding", "reranker", "generative_reranker")
TEXT_COLUMNS = ("messages", "text", "query", "prompt")

DEFAULT_RERANK_TEMPLATE = ("Judge whether the document answers the query. Answer only \"yes\" or \"no\".\n"
                           "Query: {query}\nDocument: {document}")


@dataclass
class LabelledText:
    """A ``seq_cls`` row: the conversation and its label (class id, multi-hot list or number)."""

    messages: Messages
    label: Any


@dataclass
class RetrievalRow:
    """An ``embedding`` / reranker row: the query, its positive documents, its negative documents, and an
    optional similarity label (pair losses)."""

    query: Messages
    positives: list[Messages]
    negatives: list[Messages] = field(default_factory=list)
    label: float | None = None


@dataclass
class TaskCard:
    """What an encoder-style export is and how its inputs were built (``raylhf_task.json`` beside config.json)."""

    task: str
    max_length: int
    pooling: str = "last"  # embedding
    problem_type: str | None = None  # seq_cls
    labels: list[str] | None = None  # seq_cls: class names when the data had them
    template: str | None = None  # generative_reranker
    yes_token: str | None = None
    no_token: str | None = None

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TASK_CARD
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @staticmethod
    def load(directory: str | Path) -> TaskCard | None:
        """The card of a checkpoint, or None when it has none (a causal LM / reward model)."""
        path = Path(directory) / TASK_CARD
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return TaskCard(**data)
        except (ValueError, TypeError) as e:
            raise DataError(f"unreadable task card: {e}; it is written by raylhf's encoder trainers",
                            source=str(path)) from None


# ------------------------------------------------------------------------------------------------ reading rows

def _rows(files: Sequence[str], columns: Mapping[str, str] | None, max_samples: int | None, split: str | None,
          kind: str) -> list[Row]:
    if not files:
        raise DataError(f"no data files given for {kind} data")
    return [row for _, rows in renamed_sources(files, columns, max_samples, split) for row in rows]


def _side(value: Any, column: str, row: Row) -> Messages:
    """One text side: a string (one user turn) or a message list."""
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], Mapping)):
        return prompt_messages(value, row, column)
    raise row.error(f"wrong type: {column!r} must be a string or a list of {{role, content}} messages, got "
                    f"{type_name(value)}")


def _sides(value: Any, column: str, row: Row) -> list[Messages]:
    """Several sides: one string, a list of strings, or a list of message lists (ms-swift 3.8's
    ``positive_messages``)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [_side(value, column, row)]
    if not isinstance(value, list):
        raise row.error(f"wrong type: {column!r} must be a list of strings or of message lists, got "
                        f"{type_name(value)}")
    if value and isinstance(value[0], Mapping):  # one message list
        return [check_messages(value, column, row)]
    return [check_messages(v, column, row) if isinstance(v, list) else _side(v, column, row) for v in value]


def _label(value: Any, row: Row) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        return value  # a class name; seq_cls maps names to ids
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in value):
        return list(value)
    raise row.error(f"'label' must be a class id, a class name, a list of numbers or a number, got {value!r}")


def load_labelled_texts(files: Sequence[str], *, columns: Mapping[str, str] | None = None,
                        max_samples: int | None = None, split: str | None = None) -> list[LabelledText]:
    """``seq_cls`` rows of ``files``; a row without a text column or a label is a :class:`DataError`."""
    out: list[LabelledText] = []
    for row in _rows(files, columns, max_samples, split, "sequence-classification"):
        column = next((c for c in TEXT_COLUMNS if c in row.data), None)
        if column is None:
            raise row.error(f"no text column: expected one of {list(TEXT_COLUMNS)}; columns present: "
                            f"{sorted(row.data)}; map yours with data.columns, e.g. {{text: sentence}}")
        if "label" not in row.data:
            raise row.error(f"missing column 'label'; columns present: {sorted(row.data)}")
        messages = (check_messages(row.data[column], column, row) if column == "messages"
                    else _side(row.data[column], column, row))
        out.append(LabelledText(messages, _label(row.data["label"], row)))
    return out


def load_retrieval_rows(files: Sequence[str], *, columns: Mapping[str, str] | None = None,
                        max_samples: int | None = None, split: str | None = None, kind: str = "embedding",
                        need_negatives: bool = False) -> list[RetrievalRow]:
    """Query / positive / negative rows in either ms-swift shape; a row with no positive (or, when
    ``need_negatives``, no negative) is a :class:`DataError`."""
    out: list[RetrievalRow] = []
    for row in _rows(files, columns, max_samples, split, kind):
        d = row.data
        if "messages" in d:
            query = check_messages(d["messages"], "messages", row)
            pos_col, neg_col = "positive_messages", "negative_messages"
        elif "query" in d:
            query = _side(d["query"], "query", row)
            pos_col, neg_col = "response", "rejected_response"
        else:
            raise row.error(f"no query: expected 'messages' + 'positive_messages' (ms-swift >= 3.8) or 'query' + "
                            f"'response' (before 3.8); columns present: {sorted(d)}")
        positives, negatives = _sides(d.get(pos_col), pos_col, row), _sides(d.get(neg_col), neg_col, row)
        if not positives:
            raise row.error(f"missing or empty {pos_col!r}: every {kind} row needs a positive document")
        if need_negatives and not negatives:
            raise row.error(f"missing or empty {neg_col!r}: a {kind} row needs at least one negative document")
        label = d.get("label")
        if isinstance(label, bool):
            label = float(label)
        elif label is not None and not isinstance(label, (int, float)):
            raise row.error(f"'label' must be a number (the pair's similarity), got {label!r}")
        out.append(RetrievalRow(query, positives, negatives, None if label is None else float(label)))
    return out


# ------------------------------------------------------------------------------------------------ tokenizing

def encode_side(tokenizer: Any, messages: Messages, max_length: int) -> list[int]:
    """One side's token ids: the chat template of ``messages``, the last ``max_length`` tokens."""
    return encode_text(tokenizer, chat_text(tokenizer, messages, add_generation_prompt=False))[-max_length:]


def text_of(messages: Messages) -> str:
    """A side as plain text (its turns' contents, one per line): what a generative reranker's template gets."""
    return "\n".join(m["content"] for m in messages)


def rerank_messages(query: Messages, document: Messages) -> Messages:
    """A cross-encoder's conversation: the query's turns, then the document as the assistant turn."""
    return [*query, {"role": "assistant", "content": text_of(document)}]


def encode_pair(tokenizer: Any, query: Messages, document: Messages, max_length: int) -> list[int]:
    """A reranker's input for one query-document pair."""
    return encode_side(tokenizer, rerank_messages(query, document), max_length)


def encode_generative(tokenizer: Any, template: str, query: Messages, document: Messages, max_length: int
                      ) -> list[int]:
    """A generative reranker's input: the template as one user turn, with the generation prompt; the next
    token's yes / no logits are the relevance."""
    try:
        content = template.format(query=text_of(query), document=text_of(document))
    except (KeyError, IndexError) as e:
        raise DataError(f"generative_reranker.template must use only {{query}} and {{document}}, it uses {e}; "
                        "write other braces as {{ and }}") from None
    text = chat_text(tokenizer, [{"role": "user", "content": content}], add_generation_prompt=True)
    return encode_text(tokenizer, text)[-max_length:]


def single_token_id(tokenizer: Any, word: str, field_name: str) -> int:
    """The id of ``word`` when it is one token; else a :class:`DataError` naming the config field."""
    ids = encode_text(tokenizer, word)
    if len(ids) != 1:
        raise DataError(f"{field_name}={word!r} is {len(ids)} tokens with this tokenizer ({ids}); it must be one "
                        "token: try it with or without a leading space")
    return ids[0]
