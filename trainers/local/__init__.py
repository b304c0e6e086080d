"""POISE trainers/local."""
