"""The embedded demos: what `python -m raylhf.<trainer>` runs with no data files (task data in
``raylhf.demo.tasks``, the cached SFT warm-up, the default runs and their report lines). The demo depends on
the trainers, never the reverse. See docs/architecture.md.
"""
