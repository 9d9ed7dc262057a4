"""Built-in tasks: small generated datasets used by the demo, tests and benchmarks."""
