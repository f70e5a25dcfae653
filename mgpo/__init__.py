"""MGPO: multi-turn grounding for high-resolution visual reasoning with Qwen2.5-VL.

The engine (:mod:`mgpo.engine`) runs turn-1 grounding → crop from the original → turn-2 answer
as a generator of small typed events (:mod:`mgpo.events`). Prompts, parsing and geometry are
pure modules; :mod:`mgpo.model` loads the model, :mod:`mgpo.generation` drives it.
"""

__version__ = "0.1.0"
