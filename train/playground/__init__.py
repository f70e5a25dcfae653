"""The playground recipe (``python -m train.playground``): a small Qwen2.5-VL given base skills by
supervised training, then MGPO RL, measured with the eval harness and shipped as a release folder.

- ``settings.py`` — the sizes and :class:`RecipeConfig` (the flags), the curriculum's phases
- ``runtime.py`` — the device, log lines, scenes rendered ahead in worker processes
- ``vision.py``  — stage 0 of the skills: the vision tower's probe pretraining
- ``skills.py``  — the supervised skills, phase by phase, with held-out scores
- ``rl.py``      — MGPO RL on "train" scenes, the binary accuracy reward only
- ``cards.py``   — the base checkpoint's and the release's model cards
- ``recipe.py``  — the stages in order, the eval and ship stages, the command line
- ``lookup.py``  — stage 2's name → card look-up on its own (``python -m train.playground.lookup``)
- ``probe_features.py`` — the image features that probe feeds instead of the tower's
"""
