"""Reward functions: small pure functions looked up by name, combined with weights. Torch-free.

Every reward has one signature, ``fn(completion: Completion, target: str | None) -> float``:
``completion`` is what a rollout produced (final text, extracted answer, letter, turn texts,
whether turn 1 gave a valid box), ``target`` the ground-truth letter. Bad model text never
raises: it scores 0.

The default, ``{"accuracy": 1.0}``, is the paper's: 1 when the letter in the last ``\\boxed{}``
equals the ground truth (case and surrounding text normalised by
:func:`mgpo.parsing.answer_letter`), else 0. No format, grounding or judge reward — those below
are options, off by default.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from mgpo.parsing import answer_letter, extract_boxed


@dataclass(frozen=True)
class Completion:
    """What one sampled conversation produced, as rewards see it."""

    final_text: str                 # the last turn's text
    answer: str | None = None       # content of the last \boxed{} (None: none)
    letter: str | None = None       # that answer read as a choice letter (None: unreadable)
    n_choices: int = 0
    texts: tuple[str, ...] = ()     # the model's text per turn
    valid_box: bool = False         # turn 1 gave a box the box rule accepted
    final_tokens: int = 0           # tokens the model sampled in the last turn
    max_new_tokens: int = 0         # the per-turn budget those tokens count against

    @classmethod
    def from_text(cls, text: str, n_choices: int = 5, **kw) -> "Completion":
        """A completion from bare final text (tests, tools): the answer is parsed here."""
        answer = extract_boxed(text)
        return cls(text, answer, answer_letter(answer, n_choices) if n_choices else None, n_choices,
                   texts=kw.pop("texts", (text,)), **kw)


Reward = Callable[[Completion, "str | None"], float]
_REGISTRY: dict[str, Reward] = {}


def register(name: str, fn: Reward | None = None):
    """Add a reward under ``name`` (usable as a decorator). Re-registering a name replaces it."""
    def put(f: Reward) -> Reward:
        _REGISTRY[name] = f
        return f
    return put(fn) if fn is not None else put


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> Reward:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r}; choose from {', '.join(names())}") from None


def _letter(target: str | None, n: int) -> str | None:
    if target is None:
        return None
    return answer_letter(str(target), max(n, 26) if n == 0 else n) or answer_letter(str(target))


def _norm(text: str) -> str:
    return " ".join(str(text).lower().strip().rstrip(".").split())


@register("accuracy")
def accuracy(c: Completion, target: str | None) -> float:
    """The paper's reward: 1.0 when the last \\boxed{} letter equals the ground truth. For an open
    question (no choices) whose answer is not a letter: the boxed text equals it (case, spaces
    and a final period normalised)."""
    if c.n_choices == 0 and target is not None and not re.fullmatch(r"\s*\(?[A-Za-z]\)?\s*", str(target)):
        return 1.0 if c.answer is not None and _norm(c.answer) == _norm(target) else 0.0
    want = _letter(target, c.n_choices)
    if want is None:
        return 0.0
    got = c.letter if c.letter is not None else answer_letter(c.answer, max(c.n_choices, 1) if c.n_choices else 26)
    return 1.0 if got == want else 0.0


@register("format")
def boxed_format(c: Completion, target: str | None) -> float:
    """1.0 when the final turn holds a readable \\boxed{} answer (a letter if there are choices)."""
    if c.answer is None:
        return 0.0
    return 1.0 if (c.n_choices == 0 or c.letter is not None) else 0.0


@register("valid_box")
def valid_box(c: Completion, target: str | None) -> float:
    """1.0 when turn 1 produced a box the box rule accepted (a grounding-format reward)."""
    return 1.0 if c.valid_box else 0.0


@register("brevity")
def brevity(c: Completion, target: str | None) -> float:
    """1 − (final-turn tokens / max_new_tokens), in [0, 1]: shorter final answers score more."""
    if c.max_new_tokens <= 0:
        return 0.0
    return max(0.0, 1.0 - c.final_tokens / c.max_new_tokens)


@dataclass
class RewardSpec:
    """Weighted rewards by name: the total is Σ weight · reward."""

    weights: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0})

    def __post_init__(self):
        if not self.weights:
            raise ValueError("at least one reward is needed")
        for name in self.weights:
            get(name)

    def score(self, c: Completion, target: str | None) -> tuple[float, dict[str, float]]:
        """(total, {name: unweighted value})."""
        parts = {name: float(get(name)(c, target)) for name in self.weights}
        return sum(self.weights[n] * v for n, v in parts.items()), parts


def parse_weights(spec: str | dict | None) -> dict[str, float]:
    """``"accuracy=1,format=0.1"`` or ``{"accuracy": 1}`` → a weight dict; ``None`` → the default."""
    if spec is None or spec == "":
        return {"accuracy": 1.0}
    if isinstance(spec, dict):
        return {str(k): float(v) for k, v in spec.items()}
    out: dict[str, float] = {}
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        name, _, w = part.partition("=")
        try:
            out[name.strip()] = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"bad reward weight in {part!r}; write name=weight, e.g. accuracy=1") from None
    return out
