"""Generative models: the worker-side step loop (runner), the main-side sequence scheduler and the
request limits. Only `runner` and `sampling` run in workers (sampling imports torch)."""
