"""POISE evals."""
