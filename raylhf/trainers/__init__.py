"""The trainers: one recipe per algorithm on the driver's run lifecycle; they never import each other.
See docs/architecture.md.
"""
