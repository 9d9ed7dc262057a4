"""Configs of the encoder-style trainers: `raylhf seq_cls`, `raylhf embedding`, `raylhf reranker` and
`raylhf generative_reranker` (docs/encoders.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raylhf.config.run import TrainerSections
from raylhf.config.sections import DataConfig, ModelConfig, PolicyConfig, Section, TinyModelConfig
from raylhf.data.retrieval import DEFAULT_RERANK_TEMPLATE


def encoder_demo_model() -> ModelConfig:
    """The encoder demos' model: a tiny random Llama (hidden 128, 2 layers), trained from scratch."""
    return ModelConfig(tiny=TinyModelConfig(hidden_size=128, num_layers=2, intermediate_size=384))


class EncoderAlgoConfig(Section):
    """What every encoder-style trainer shares: steps, batch, length, held-out evaluation."""

    num_steps: int | None = Field(None, gt=0, description="optimizer steps; null: epochs over the rows")
    epochs: int = Field(3, gt=0, description="passes over the rows when num_steps is null")
    batch_size: int = Field(32, gt=0, description="rows per optimizer step (all ranks); a row is a text, a query "
                            "with its documents, or a pair")
    max_length: int = Field(256, gt=0, description="tokens of one input; longer ones keep their last tokens (the "
                            "head reads the last one)")
    eval_every: int = Field(0, ge=0, description="held-out metrics every N steps; 0: at the start and the end")
    eval_fraction: float = Field(
        0.05, ge=0, lt=1, description="with train files but no data.eval_files: share of the rows held out for the "
        "metrics (0: no evaluation)")


class SeqClsAlgoConfig(EncoderAlgoConfig):
    problem_type: Literal["auto", "single_label_classification", "multi_label_classification", "regression"] = Field(
        "auto", description="auto: the model config's problem_type when it has one, else from the labels (an id or "
        "a name: single label; a list: multi label; a float: regression)")
    num_labels: int | None = Field(None, gt=0, description="classes; null: the model config's (a classifier), "
                                   "else from the labels")


class EmbeddingAlgoConfig(EncoderAlgoConfig):
    loss: Literal["infonce", "cosine_similarity", "contrastive", "online_contrastive"] = Field(
        "infonce", description="infonce: query vs its positive, its hard negatives and (in_batch_negatives) the "
        "micro-batch's other documents; cosine_similarity: MSE of cos to the row's label; contrastive / "
        "online_contrastive: margin losses on (query, document, 0/1) pairs")
    temperature: float = Field(0.01, gt=0, description="infonce: similarities are divided by it")
    in_batch_negatives: bool = Field(True, description="infonce: other rows' documents of the micro-batch count as "
                                     "negatives (policy.micro_batch_size sets how many rows share one)")
    num_negatives: int | None = Field(
        None, ge=0, description="infonce: hard negatives per query; null: the fewest any training row has (rows with "
        "more use a seeded draw)")
    margin: float = Field(0.5, ge=0, description="contrastive / online_contrastive: distance margin (1 - cos)")
    pooling: Literal["last", "mean"] = Field("last", description="the vector: the last token's hidden state, or the "
                                              "mean over the real tokens")
    recall_k: list[int] = Field(default_factory=lambda: [1, 5], description="held-out recall@k reported")


class RerankerAlgoConfig(EncoderAlgoConfig):
    loss: Literal["pointwise", "listwise"] = Field(
        "listwise", description="pointwise: binary cross-entropy of every query-document relevance logit; "
        "listwise: softmax cross-entropy of the positive among its group")
    num_negatives: int = Field(3, gt=0, description="negatives per query (a group is the positive + these); a row "
                               "with fewer borrows other rows' positives, with more uses a seeded draw")
    temperature: float = Field(1.0, gt=0, description="listwise: scores are divided by it")


class GenerativeRerankerAlgoConfig(RerankerAlgoConfig):
    template: str = Field(DEFAULT_RERANK_TEMPLATE, description="the user turn, with {query} and {document}; the "
                          "relevance is logit(yes_token) - logit(no_token) of the reply's first token")
    yes_token: str = Field("yes", description="the token that means relevant (one token of the tokenizer)")
    no_token: str = Field("no", description="the token that means not relevant (one token of the tokenizer)")


class EncoderDemoConfig(Section):
    """The embedded run used when ``data.train_files`` is empty: generated rows (raylhf/demo/tasks/retrieval_data.py)."""

    num_train: int = Field(3000, gt=0, description="training rows generated")
    num_heldout: int = Field(200, gt=0, description="held-out rows (never trained on)")


def _encoder_policy() -> PolicyConfig:
    return PolicyConfig(lr=1e-3, lr_scheduler="cosine", warmup_steps=20, micro_batch_size=64, num_cpus_per_worker=2)


class _EncoderSections(TrainerSections):
    model: ModelConfig = Field(default_factory=encoder_demo_model)
    data: DataConfig = Field(default_factory=DataConfig)
    policy: PolicyConfig = Field(default_factory=_encoder_policy)
    demo: EncoderDemoConfig = Field(default_factory=EncoderDemoConfig)

    def _algo(self) -> EncoderAlgoConfig:
        raise NotImplementedError

    @model_validator(mode="after")
    def _batches(self) -> _EncoderSections:
        algo, name = self._algo(), self._section_name
        if algo.batch_size % self.policy.num_workers:
            raise ValueError(f"{name}.batch_size ({algo.batch_size}) must be divisible by policy.num_workers "
                             f"({self.policy.num_workers}): each rank takes whole rows")
        if self.data.format != "auto":
            raise ValueError(f"data.format={self.data.format!r}: the {name} trainer reads its own row shapes "
                             "(docs/encoders.md); leave data.format at auto")
        return self

    _section_name = "encoder"


class SeqClsConfig(_EncoderSections):
    seq_cls: SeqClsAlgoConfig = Field(default_factory=SeqClsAlgoConfig)
    _section_name = "seq_cls"

    def _algo(self) -> EncoderAlgoConfig:
        return self.seq_cls


class EmbeddingConfig(_EncoderSections):
    embedding: EmbeddingAlgoConfig = Field(default_factory=EmbeddingAlgoConfig)
    _section_name = "embedding"

    def _algo(self) -> EncoderAlgoConfig:
        return self.embedding


class RerankerConfig(_EncoderSections):
    reranker: RerankerAlgoConfig = Field(default_factory=RerankerAlgoConfig)
    _section_name = "reranker"

    def _algo(self) -> EncoderAlgoConfig:
        return self.reranker


class GenerativeRerankerConfig(_EncoderSections):
    reranker: GenerativeRerankerAlgoConfig = Field(default_factory=GenerativeRerankerAlgoConfig)
    _section_name = "reranker"

    def _algo(self) -> EncoderAlgoConfig:
        return self.reranker
