"""Verbs that are not trainers: best-of-N sampling, the reward server, the sandbox runner, and the verbs on a
checkpoint (``infer``: batch generation / scoring; ``export``: merge a LoRA / IA3 run). See docs/architecture.md
and docs/verbs.md.
"""
