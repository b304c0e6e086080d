"""POISE trainers."""
