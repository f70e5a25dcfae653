"""The MGPO prompt templates, as data. Pure.

The default set, ``"mgpo"``, is the paper's text verbatim (its training script's strings). The
``{answer_format}`` slot holds ``"(A, B, C, D, or E) "`` when the question has choices — which
renders the paper's sentence exactly — and ``""`` for an open question typed by a visitor, whose
answer still goes in ``\\boxed{}``. Sets are selected by name with :func:`get_prompts`; add your
own with :func:`register`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MC_ANSWER_FORMAT = "(A, B, C, D, or E) "
MC_ANSWER_NOUN = "answer letter (A, B, C, D, or E) "


@dataclass(frozen=True)
class PromptSet:
    """One family of templates. ``{question}``, ``{choices}`` and ``{answer_format}`` are filled
    by the functions below; ``<image>`` marks where the image goes in a user turn."""

    name: str
    system: str
    grounding: str        # turn 1 (choices are not shown)
    crop: str             # turn 2 with a valid box: the enlarged sub-image
    fallback: str         # turn 2 with a missing/invalid box: the original again
    refine: str           # extra turns (max_turns > 2): another look inside the sub-image
    direct: str           # the single-turn GRPO baseline prompt
    direct_system: str | None = None  # None: the chat template's default system prompt


PAPER = PromptSet(
    name="mgpo",
    system=(
        "You are a helpful assistant. Given an image and one question. First, identify the coordinates "
        "of the key image area relevant to solving the problem. Append the coordinates in JSON format at "
        "the end of your response and stop. This will trigger cropping of the corresponding area in the "
        "original image and enlarge it for improved clarity. Once the enlarged image is available, provide "
        "the final answer {answer_format}enclosed within \\boxed{{}}."
    ),
    grounding=(
        "<image>Question: {question} Out the coordinates of the key image area relevant to the problem in "
        "JSON format."
    ),
    crop=(
        "Based on the provided coordinates, return the sub-image:\n<image>\nQuestion: {question} {choices}"
        "Carefully analyze both the original image and the enlarged sub-image to solve the question step by "
        "step. If the sub-image does not provide sufficient information, refer to the original image to find "
        "the solution. Present your reasoning clearly, and provide the final answer {answer_format}enclosed "
        "within \\boxed{{}}."
    ),
    fallback=(
        "Not providing correct coordinates or invalid coordinate values, return the original image:\n<image>\n"
        "Question: {question} {choices}Carefully analyze the original image to solve the question step by "
        "step. Present your reasoning clearly, and provide the final answer {answer_format}enclosed within "
        "\\boxed{{}}."
    ),
    # Not in the paper (its Table 6 runs a third turn without saying how it is prompted): the
    # project's wording, built from the turn-1 and turn-2 sentences.
    refine=(
        "Based on the provided coordinates, return the sub-image:\n<image>\nQuestion: {question} Out the "
        "coordinates of the key image area relevant to the problem within this sub-image in JSON format."
    ),
    direct=(
        "<image>{question}\nOutput the coordinates of the key image area relevant to the problem in JSON "
        "format. And put the {answer_noun}within \\boxed{{}}."
    ),
)

_REGISTRY: dict[str, PromptSet] = {PAPER.name: PAPER}


def register(prompts: PromptSet) -> None:
    """Make a prompt set selectable by its name."""
    _REGISTRY[prompts.name] = prompts


def get_prompts(name: str = "mgpo") -> PromptSet:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown prompt set {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def ensure_period(question: str) -> str:
    """The question, stripped, ending in terminal punctuation (a period is added if missing)."""
    q = question.strip()
    return q if q.endswith((".", "?", "!", "。", "？", "！")) else q + "."


_PREFIX = re.compile(r"^\s*\(?([A-Za-z])[).:]\s*")


def strip_letter(choice: str, letter: str) -> str:
    """``"(B) red"`` → ``"red"`` when the choice already carries its own letter."""
    m = _PREFIX.match(choice)
    if m and m.group(1).upper() == letter:
        return choice[m.end():].strip()
    return choice.strip()


def format_choices(choices: list[str] | None) -> str:
    """``The choices are listed below:\\n(A) …\\n(B) …\\n`` — or ``""`` for an open question."""
    if not choices:
        return ""
    lines = [f"({LETTERS[i]}) {strip_letter(c, LETTERS[i])}" for i, c in enumerate(choices)]
    return "The choices are listed below:\n" + "".join(line + "\n" for line in lines)


def _fill(template: str, question: str, choices: list[str] | None) -> str:
    return template.format(
        question=question,
        choices=format_choices(choices),
        answer_format=MC_ANSWER_FORMAT if choices else "",
        answer_noun=MC_ANSWER_NOUN if choices else "answer ",
    )


def render(prompts: PromptSet, kind: str, question: str, choices: list[str] | None = None) -> str:
    """The text of one template, ``<image>`` marking the image. ``kind``: system, grounding,
    crop, fallback, refine, direct."""
    if kind == "direct":
        q = question.strip()
        if choices:
            q = q + "\n" + format_choices(choices).rstrip("\n")
        return _fill(prompts.direct, q, choices)
    if kind == "system":
        return _fill(prompts.system, "", choices)
    return _fill(getattr(prompts, kind), ensure_period(question), choices)


def split_image(text: str) -> list[str | None]:
    """Split a user text at ``<image>``: ``"a<image>b"`` → ``["a", None, "b"]`` (None = image)."""
    parts: list[str | None] = []
    for i, chunk in enumerate(text.split("<image>")):
        if i:
            parts.append(None)
        if chunk:
            parts.append(chunk)
    return parts


def user_message(text: str, images) -> dict:
    """A user chat message in the engine's format: ``text`` split at ``<image>``, each image part
    ``{"type": "image", "image": next of images}`` in order."""
    images = iter(images)
    return {"role": "user", "content": [{"type": "image", "image": next(images)} if part is None
                                        else {"type": "text", "text": part} for part in split_image(text)]}


def with_name(prompts: PromptSet, name: str, **changes) -> PromptSet:
    """A copy of ``prompts`` under a new name with some templates changed."""
    return replace(prompts, name=name, **changes)
