"""POISE graph."""
