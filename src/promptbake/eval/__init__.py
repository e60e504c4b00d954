"""Evaluation of a bake: held-out KL (kl.py); judges, knowledge, drift and benchmarks come later."""
