"""POISE memory."""
