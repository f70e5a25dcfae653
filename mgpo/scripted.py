"""A scripted stand-in model with the backend interface of :class:`mgpo.generation.QwenBackend`.

It replies with text you give it, streamed in small pieces, and keeps the same per-sample
records (token ids are the UTF-8 bytes of the text; an image is ``visual_tokens`` copies of
``IMAGE_TOKEN``). Tests of the engine, the demo and the evaluator use it to get known answers
without a network; it runs no neural network and is never a substitute for one in a result.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .parsing import complete_fenced_box
from .conversation import Conversations, FedImage, Generated, Row, Sampling

IMAGE_TOKEN = 256
IM_END = 257

Reply = Callable[[int, int, dict], str]  # (sample, turn, user message) -> text


class ScriptedBackend:
    """Replies from ``replies``: a list (turn k gets ``replies[k-1]``, for every sample) or a
    function ``(sample, turn, message) -> str`` (``message`` is the chat message of that turn,
    images included). Records every message it receives in ``self.messages``."""

    def __init__(self, replies: list[str] | Reply, chunk: int = 3, delay: float = 0.0):
        self.replies = replies
        self.chunk = chunk
        self.delay = delay
        self.messages: list[tuple[int, dict]] = []   # (sample, user message) in arrival order

    def _reply(self, sample: int, turn: int, message: dict) -> str:
        if callable(self.replies):
            return self.replies(sample, turn, message)
        return self.replies[min(turn, len(self.replies)) - 1]

    def _add(self, row: Row, text: str, message: dict | None) -> None:
        row.add_tokens(list(text.encode()))
        if message:
            for c in message["content"]:
                if c.get("type") == "image":
                    w, h = c["image"].size
                    row.add_image(FedImage(c["image"], None, (1, h // 14, w // 14)), IMAGE_TOKEN)
                elif c.get("type") == "text":
                    row.add_tokens(list(c["text"].encode()))

    def start(self, prompts: list[list[dict]], group_size: int = 1) -> Conversations:
        """New conversations; per-call state (turn numbers, last messages) lives on them, so
        concurrent calls on one backend do not mix."""
        rows, last = [], {}
        for i, messages in enumerate(prompts):
            row = Row()
            for m in messages:
                self._add(row, f"<{m['role']}>", m)
            for g in range(group_size):
                r = i * group_size + g
                last[r] = messages[-1]
                self.messages.append((r, messages[-1]))
                rows.append(row.copy())
        convs = Conversations(rows)
        convs.script_turn, convs.script_last = {}, last
        return convs

    def append(self, convs: Conversations, index: int, message: dict) -> None:
        convs.script_last[index] = message
        self.messages.append((index, message))
        self._add(convs.rows[index], "<user>", message)

    def reset_cache(self, convs: Conversations) -> None:
        pass

    def generate(self, convs: Conversations, rows: list[int], sampling: Sampling, stop_on_box=frozenset()):
        out = {}
        for r in rows:
            turn = convs.script_turn[r] = convs.script_turn.get(r, 0) + 1
            text, t0 = self._reply(r, turn, convs.script_last[r]), time.perf_counter()
            data = text.encode()[: sampling.max_new_tokens]
            stop = "eos" if len(data) == len(text.encode()) else "length"
            text = data.decode(errors="ignore")
            if r in stop_on_box:
                end = complete_fenced_box(text)
                if end is not None:
                    text, stop = text[:end], "box"
            for k in range(0, len(text), self.chunk):
                if self.delay:
                    time.sleep(self.delay)
                yield r, text[k:k + self.chunk]
            ids = list(text.encode()) + ([IM_END] if stop == "eos" else [])
            convs.rows[r].add_tokens(ids, policy=1, logprobs=[0.0] * len(ids))
            out[r] = Generated(text, ids, [0.0] * len(ids), stop, 0, 0.0, time.perf_counter() - t0)
        return out
