"""The encoder trainers' demos (seq_cls, embedding, reranker, generative_reranker with no data files): generated
rows (``raylhf/demo/tasks/retrieval_data.py``), a tiny random model trained from scratch, and the before / after
report of the held-out metrics. See docs/encoders.md."""

from __future__ import annotations

from raylhf.config.encoders import EmbeddingConfig, GenerativeRerankerConfig, RerankerConfig, SeqClsConfig
from raylhf.demo.tasks.retrieval_data import animal_rows, scene_rows, topic_texts
from raylhf.trainers import embedding, reranker, seq_cls


def _note(name: str, what: str) -> None:
    print(f"[{name}] no data.train_files: the embedded task ({what})", flush=True)


def seq_cls_demo(cfg: SeqClsConfig) -> int:
    """Topic classification of generated word lists (4 classes); prints held-out accuracy / F1 before -> after."""
    _note("seq_cls", f"{cfg.demo.num_train} texts of 4 topics, {cfg.demo.num_heldout} held out")
    train, held = topic_texts(cfg.demo.num_train, cfg.seed), topic_texts(cfg.demo.num_heldout, cfg.seed + 1)
    seq_cls.report(seq_cls.run_seq_cls(cfg, train=train, heldout=held))
    return 0


def embedding_demo(cfg: EmbeddingConfig) -> int:
    """Scene retrieval (colour, animal, place) with hard negatives; prints held-out recall@k before -> after."""
    _note("embedding", f"{cfg.demo.num_train} scene queries, {cfg.demo.num_heldout} held-out scenes")
    train, held = scene_rows(cfg.demo.num_train, cfg.demo.num_heldout, cfg.seed)
    embedding.report(embedding.run_embedding(cfg, train=train, heldout=held))
    return 0


def reranker_demo(cfg: RerankerConfig) -> int:
    """Animal queries: the scene with the animal among scenes with others; prints held-out top-1 accuracy before -> after."""
    _note("reranker", f"{cfg.demo.num_train} animal queries, {cfg.demo.num_heldout} held-out")
    train, held = animal_rows(cfg.demo.num_train, cfg.demo.num_heldout, cfg.seed, cfg.reranker.num_negatives)
    reranker.report(reranker.run_reranker(cfg, train=train, heldout=held))
    return 0


def generative_reranker_demo(cfg: GenerativeRerankerConfig) -> int:
    """The reranker demo with the yes / no log-odds of a causal LM."""
    _note("generative_reranker", f"{cfg.demo.num_train} animal queries, {cfg.demo.num_heldout} held-out")
    train, held = animal_rows(cfg.demo.num_train, cfg.demo.num_heldout, cfg.seed, cfg.reranker.num_negatives)
    reranker.report(reranker.run_reranker(cfg, train=train, heldout=held), "generative_reranker")
    return 0


def demo_rows(name: str, cfg: object) -> tuple[list, list]:
    """The demo's (train, held-out) rows of trainer ``name`` (what ``raylhf eval`` uses without data files)."""
    demo, seed = cfg.demo, cfg.seed  # type: ignore[attr-defined]
    if name == "seq_cls":
        return topic_texts(demo.num_train, seed), topic_texts(demo.num_heldout, seed + 1)
    if name == "embedding":
        return scene_rows(demo.num_train, demo.num_heldout, seed)  # type: ignore[return-value]
    negatives = cfg.reranker.num_negatives  # type: ignore[attr-defined]
    return animal_rows(demo.num_train, demo.num_heldout, seed, negatives)  # type: ignore[return-value]
