"""POISE agents."""
