"""Builtin offline agents: the default scientist, coder and analyst when no LLM is set.

- genes.py: the catalog of mechanism genes and the ``Genome`` (one gene per slot) that
  renders to a candidate module (render.py);
- scientist.py: ``propose`` mutates or crosses genomes, biased by reflection tags, the
  directive and the fitness evidence, never proposing a genome already in the archive;
- coder.py: ``write_code`` renders a proposal's genome;
- analyst.py: ``diagnose`` turns training curves into a mechanism-level diagnosis with tags.
"""
