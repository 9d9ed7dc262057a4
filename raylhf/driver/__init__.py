"""The driver side of a run: the run lifecycle, the online and offline loops on it, phases (actor calls),
worker start-up, recovery, the rollout producer, profiling. See docs/architecture.md.
"""
