"""The playground: a generated high-resolution world where the detail needs MGPO's zoom. Pure
(PIL, numpy, random — no torch).

- :mod:`.world` — scenes (``make_scene``), pixel budgets, seed splits; ``python -m mgpo.playground.world``.
- :mod:`.draw` — a scene's pixels from its layout.
- :mod:`.legibility` — measures "illegible in the overview, legible in the crop".
- :mod:`.skill_prompts` — what each base skill is asked, word for word.
- :mod:`.skill_examples` — supervised base-skill examples (grounding by name, reading close-ups, direct answers).
- :mod:`.release` — a release folder (model, RL adapters, index, curves, card): read, check, draw.

Nothing is imported here, so ``python -m mgpo.playground.world`` runs the module once.
"""
