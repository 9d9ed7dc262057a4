"""Verbs that are not trainers: best-of-N sampling and the reward server. See docs/architecture.md.
"""
