"""What each base skill is asked, word for word: the skills' names, their prompt templates and
wordings, and :func:`trained_templates`, the list a model card prints so a reader sees which
prompts ever had a box as their target. The examples built from them are in
:mod:`.skill_examples`. Pure text: nothing here reads a scene.
"""

from __future__ import annotations

from collections.abc import Iterable

SKILLS = ("ground", "read", "answer", "cell", "zoom", "group", "zoom3")
BASIC_SKILLS = SKILLS[:5]       # what a scene gives unless skills are named: the two-turn recipe's

# MGPO's turn-1 template around a question other than the task's (one of ASK_QUESTIONS for "ask"),
# so the question's wording varies and only the card's name decides the box
_TURN1 = "<image>Question: {ask} Out the coordinates of the key image area relevant to the problem in JSON format."
GROUND_PROMPTS = {
    "locate": "<image>Locate the {name} in the image. Output the coordinates of the {name} in JSON format.",
    "where": _TURN1.replace("{ask}", "Where is the {name}?"),   # one fixed question in MGPO's turn-1 wording
    "ask": _TURN1,                                             # one of ASK_QUESTIONS per example
    "refer": "{refer}",                                        # one of REFER_PROMPTS per example
    "name-first": "{named}",                                   # one of NAME_FIRST_PROMPTS per example
}
# referring grounding in many wordings, as a pretrained VLM meets it: the object named at the
# start, mid-sentence or at the end, never MGPO's turn-1 template ("Question: … key image area
# relevant to the problem …"), never a question about a card's parts, never the task's shape. Some
# share the generic "Output the coordinates … in JSON format", as Qwen's own grounding prompts do.
REFER_PROMPTS = (
    "<image>Locate the {name} in the image. Output the coordinates of the {name} in JSON format.",
    "<image>Locate the {name} and output its bbox coordinates in JSON format.",
    "<image>Find the {name}. Output its bounding box in JSON format.",
    "<image>Detect the {name} in this image and report its bbox_2d in JSON format.",
    "<image>Output the coordinates of the {name} in JSON format.",
    "<image>Please output the bounding box of the {name} in JSON format.",
    "<image>In this image there is a {name}. Output the coordinates of the area it covers in JSON format.",
    "<image>Give the bbox_2d of the {name}, as JSON.",
    "<image>Where in the image is the {name}? Output its coordinates in JSON format.",
    "<image>Draw a bounding box around the {name}. Output the coordinates in JSON format.",
    "<image>Ground the {name}: output the coordinates of the region that shows the {name} in JSON format.",
    "<image>Which part of the picture shows the {name}? Output the coordinates of that part in JSON format.",
    "<image>Mark the {name} with a box and output the box coordinates in JSON format.",
    "<image>Show me the {name}. Output the coordinates in JSON format.",
    "<image>I am looking for the {name}. Output the coordinates of its location in JSON format.",
    "<image>Report the location of the {name} as a bounding box in JSON format.",
)
# referring grounding with the name before the image, as multi-image chats and captioned datasets
# put it: the image's own tokens then come after the name (MGPO's later turns show their crop after
# the question too). Not MGPO's templates, never a question about a card's parts.
NAME_FIRST_PROMPTS = (
    "Find the {name} in the image below. Output its coordinates in JSON format.\n<image>",
    "Locate the {name} in this image:\n<image>\nOutput the coordinates of the {name} in JSON format.",
    "The {name} is somewhere in this picture.\n<image>\nOutput its bounding box in JSON format.",
    "Look for the {name}.\n<image>\nReport its bbox_2d in JSON format.",
    "Where is the {name}?\n<image>\nOutput its coordinates in JSON format.",
    "Please box the {name} in the following image and output the box coordinates in JSON format.\n<image>",
    "I need the location of the {name}.\n<image>\nGive its bbox_2d as JSON.",
    "Show me the {name}:\n<image>\nOutput the coordinates in JSON format.",
)
# grounding a group: one box around every card of the scene (the ``group`` skill)
GROUP_PROMPTS = (
    "<image>Locate all the cards in the image. Output the coordinates of the area they cover in JSON format.",
    "<image>Output the coordinates of the region that holds every card in JSON format.",
    "<image>Draw one bounding box around all the cards. Output it in JSON format.",
    "<image>Where are the cards? Output the coordinates of the area around them in JSON format.",
)
ASK_QUESTIONS = (
    "Where is the {name}?",
    "What colour is the border of the {name}?",
    "How large is the {name}?",
    "What shape are the corners of the {name}?",
    "What lies under the {name}?",
    "Is the {name} near the edge of the image?",
    "How far is the {name} from the centre of the image?",
    "Is the {name} tilted?",
    # the task question's shape ("Which way do the … on the {name} run?") about other parts of the
    # card, so that under that shape, too, only the name decides the box — never its stripes
    "Which way do the borders on the {name} run?",
    "Which way do the edges of the {name} run?",
    "Which way do the corners of the {name} point?",
    "Which way does the {name} face?",
    "Which way does the shadow of the {name} fall?",
    "What colour are the borders on the {name}?",
    "How thick are the borders on the {name}?",
    "How many corners does the {name} have?",
)
READ_OPEN = "<image>Which way do the stripes on the card run? Put the answer within \\boxed{}."
READ_CHOICES = "<image>Which way do the stripes on the card run?\n{choices}Answer with the option's letter within \\boxed{{}}."
ANSWER = "<image>{question}\n{choices}Answer with the option's letter within \\boxed{{}}."
# turn-2 reading questions of the zoom skill: about "the card" or "the label", never naming it by
# colour as the task's question does
ZOOM_QUESTIONS = (
    "Which way do the stripes on the card run?",
    "Which way do the stripes on the label run?",
    "In which direction do the stripes in this picture run?",
    "How are the stripes on the card oriented?",
)
CELL = "<image>In which cell of the board is the {name}? Answer with its row and column."


def trained_templates(skills: Iterable[str], wordings: str = "locate") -> list[tuple[str, str, str]]:
    """``(skill, prompt template, what is learned)`` for every prompt the named skills train with
    (``wordings``: the grounding prompts, as ``scene_examples``' ``prompt``): what a model card
    lists so a reader sees which prompts ever had a box as their target."""
    box = "a `bbox_2d` JSON block (the card's box, learned)"
    rows: list[tuple[str, str, str]] = []
    skills = tuple(skills)
    if "ground" in skills:
        for w in dict.fromkeys(x.strip() for x in wordings.split(",") if x.strip()):
            if w == "refer":
                rows += [("ground", t, box) for t in REFER_PROMPTS]
            elif w == "name-first":
                rows += [("ground", t, box) for t in NAME_FIRST_PROMPTS]
            elif w == "ask":
                rows += [("ground", GROUND_PROMPTS["ask"].replace("{ask}", q), box) for q in ASK_QUESTIONS]
            else:
                rows.append(("ground", GROUND_PROMPTS[w], box))
    if "cell" in skills:
        rows.append(("cell", CELL, "`row R, column C` (learned)"))
    if "read" in skills:
        rows += [("read", READ_OPEN, "`\\boxed{orientation}` (learned)"),
                 ("read", READ_CHOICES, "`\\boxed{letter}` (learned)")]
    if "zoom" in skills:
        rows.append(("zoom", "turn 1 (context, never learned): " + GROUND_PROMPTS["ask"].replace("{ask}", "<one of ASK_QUESTIONS>")
                     + " → its box; turn 2: MGPO's turn-2 template around one of: " + " / ".join(ZOOM_QUESTIONS),
                     "turn 2's `\\boxed{letter}` only (the turn-1 box is context)"))
    if "answer" in skills:
        rows.append(("answer", ANSWER, "`\\boxed{letter}` (learned)"))
    if "group" in skills:
        rows += [("group", t, "a `bbox_2d` JSON block (the box around every card, learned)") for t in GROUP_PROMPTS]
    if "zoom3" in skills:
        rows.append(("zoom3", "turn 1 (context, never learned): " + GROUND_PROMPTS["ask"].replace("{ask}", "<one of ASK_QUESTIONS>")
                     + " → the box around every card; turn 2 (context, never learned): MGPO's further-look template "
                       "around the same question, that box's crop → the card's box in it; turn 3: MGPO's turn-2 "
                       "template around one of: " + " / ".join(ZOOM_QUESTIONS),
                     "turn 3's `\\boxed{letter}` only (both boxes are context)"))
    return rows
