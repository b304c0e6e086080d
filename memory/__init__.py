"""POISE memory: the evidence that steers the search.

- ``memory.archive``: ``Archive``, the SQL genealogy (runs, candidates, lineage,
  evaluations, reflections); the source of truth, kept in step with the vectors.
- ``memory.schema``: the SQLModel tables, statuses and schema versioning.
- ``memory.vectors``: Chroma collections embedded with the bundled all-MiniLM-L6-v2.
- ``memory.evidence``: similar past reflections with outcomes; the novelty check.
- ``memory.selection``: parent selection by descendant potential.
- Commands: ``python -m memory.query``, ``memory.show``, ``memory.reindex``,
  ``memory.bench``.
"""
