"""The playground: a generated high-resolution world where the detail needs MGPO's zoom. Pure
(PIL, numpy, random — no torch).

- :mod:`.world` — scenes (``make_scene``), pixel budgets, seed splits; ``python -m mgpo.playground.world``.
- :mod:`.legibility` — measures "illegible in the overview, legible in the crop".
- :mod:`.skills` — supervised base-skill examples (grounding by name, reading close-ups, direct answers).

Nothing is imported here, so ``python -m mgpo.playground.world`` runs the module once.
"""
