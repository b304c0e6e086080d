"""The builtin coder: a proposal's code is its genome, rendered (agents/builtin/render.py)."""
from __future__ import annotations

from agents.proposal import Proposal
from trainers.source import code_hash


def write_code(proposal: Proposal) -> str:
    """The candidate module for ``proposal``, with NAME = ``proposal.name``."""
    return proposal.genome.render(name=proposal.name)


def matches_proposal(proposal: Proposal, code: str) -> bool:
    """The builtin consistency rule: ``code`` is exactly the proposal's rendered genome
    (up to whitespace), so it does what the proposal says."""
    return code_hash(code) == code_hash(write_code(proposal))


__all__ = ["write_code", "matches_proposal"]
