"""Core types and helpers every layer uses: batch types, the objective, metric reduction, the NaN guard,
checkpoints, run errors. Pure: imports only algos. See docs/architecture.md.
"""
