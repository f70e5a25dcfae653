"""A real-model backend whose turn lengths and turn-1 text are scripted (tests and the benchmark).

Random weights never write a usable box, so the MGPO crop path (turn 2 on a crop of the
original) is never reached with them, and they stop at EOS at random. :class:`ForcedBackend`
runs the real model, the real prefill / KV cache / decode loop of
:class:`mgpo.generation.QwenBackend`, and only overrides the choice of the next token:

- grounding rows (those the engine asks to stop on a box) follow ``script`` token by token —
  e.g. a prose prefix and a fenced ``json`` box, so turn 1 ends with ``stop == "box"``;
- answer rows (every other row), with ``answer_tokens=n``, write n tokens: n − 1 sampled ones
  with EOS masked, then EOS — so every answer turn has exactly n new tokens; with ``answer``,
  they follow that text token by token, then ``<|im_end|>``;
- ``mask_eos=True`` (implied by ``answer_tokens``) masks EOS on every sampled token, so a turn
  without a forced end runs to ``max_new_tokens``.

The log-prob recorded for every token, forced or sampled with EOS masked, is the unmasked
policy's own ``log_softmax(logits / T)[token]`` — what :meth:`QwenBackend.pick` records — so
rollouts stay exact training data (tests check it against a full forward). Only the public
:meth:`QwenBackend.pick` hook is overridden: the decode loop's stop rules (EOS, length, a complete
box) stay the one implementation.
"""

from __future__ import annotations

import torch

from mgpo.generation import QwenBackend


class ForcedBackend(QwenBackend):
    """:class:`QwenBackend` with scripted grounding text and fixed answer lengths."""

    def __init__(self, model, processor, *, script: str | None = None, answer_tokens: int | None = None,
                 answer: str | None = None, mask_eos: bool = False, kv_reuse: bool = True):
        super().__init__(model, processor, kv_reuse=kv_reuse)
        if answer_tokens is not None and answer_tokens < 1:
            raise ValueError("answer_tokens must be at least 1")
        if answer is not None and answer_tokens is not None:
            raise ValueError("give answer or answer_tokens, not both")
        self.script = self.tok(script, add_special_tokens=False)["input_ids"] if script else []
        self.answer = self.tok(answer, add_special_tokens=False)["input_ids"] if answer is not None else None
        if self.answer is not None:
            answer_tokens = len(self.answer) + 1
        self.answer_tokens = answer_tokens
        self.mask_eos = mask_eos or answer_tokens is not None
        self._grounding: set[int] = set()

    def generate(self, convs, rows, sampling, stop_on_box=frozenset()):
        self._grounding = set(stop_on_box)
        return super().generate(convs, rows, sampling, stop_on_box)

    def pick(self, logits, s, gen, rows, turns):
        # logits: (len(rows), V) float, one row per decoding conversation row, in ``rows`` order
        sample_from = logits
        if self.mask_eos:
            sample_from = logits.clone()
            sample_from[:, self.eos_ids] = float("-inf")
        ids, lps = super().pick(sample_from, s, gen, rows, turns)
        changed = self.mask_eos
        for i, (r, turn) in enumerate(zip(rows, turns)):
            step = len(turn)
            if r in self._grounding and step < len(self.script):
                ids[i], changed = self.script[step], True
            elif r not in self._grounding and self.answer is not None and step < len(self.answer):
                ids[i], changed = self.answer[step], True
            elif r not in self._grounding and self.answer_tokens is not None and step + 1 >= self.answer_tokens:
                ids[i], changed = self.im_end_id, True
        if changed:   # the policy's own log-probs (EOS unmasked), as QwenBackend.pick records them
            scaled = logits / s.temperature if s.temperature > 0 else logits
            lps = torch.log_softmax(scaled, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        return ids, lps
