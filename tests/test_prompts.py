import pytest

from mgpo.prompts import PAPER, format_choices, get_prompts, names, register, render, split_image, user_message, with_name

SPEC_SYSTEM = (
    "You are a helpful assistant. Given an image and one question. First, identify the coordinates of the key "
    "image area relevant to solving the problem. Append the coordinates in JSON format at the end of your response "
    "and stop. This will trigger cropping of the corresponding area in the original image and enlarge it for "
    "improved clarity. Once the enlarged image is available, provide the final answer (A, B, C, D, or E) enclosed "
    "within \\boxed{}."
)
CHOICES = ["LB MA 864", "LB MA 846", "LB NA 864", "LD MA 864", "This image doesn't feature the plate number."]
CHOICE_BLOCK = (
    "The choices are listed below:\n(A) LB MA 864\n(B) LB MA 846\n(C) LB NA 864\n(D) LD MA 864\n"
    "(E) This image doesn't feature the plate number.\n"
)


def test_system_prompt_is_verbatim():
    assert render(PAPER, "system", "q", CHOICES) == SPEC_SYSTEM


def test_turn1_hides_choices_and_ensures_a_period():
    text = render(PAPER, "grounding", "What is the plate number", CHOICES)
    assert text == ("<image>Question: What is the plate number. Out the coordinates of the key image area "
                    "relevant to the problem in JSON format.")
    assert "LB MA" not in text
    assert render(PAPER, "grounding", "Which one?", CHOICES).startswith("<image>Question: Which one? Out")


def test_turn2_prompts_are_verbatim():
    crop = render(PAPER, "crop", "What is the plate number?", CHOICES)
    assert crop == (
        "Based on the provided coordinates, return the sub-image:\n<image>\nQuestion: What is the plate number? "
        + CHOICE_BLOCK + "Carefully analyze both the original image and the enlarged sub-image to solve the question "
        "step by step. If the sub-image does not provide sufficient information, refer to the original image to find "
        "the solution. Present your reasoning clearly, and provide the final answer (A, B, C, D, or E) enclosed "
        "within \\boxed{}."
    )
    fallback = render(PAPER, "fallback", "What is the plate number?", CHOICES)
    assert fallback == (
        "Not providing correct coordinates or invalid coordinate values, return the original image:\n<image>\n"
        "Question: What is the plate number? " + CHOICE_BLOCK + "Carefully analyze the original image to solve the "
        "question step by step. Present your reasoning clearly, and provide the final answer (A, B, C, D, or E) "
        "enclosed within \\boxed{}."
    )


def test_single_turn_baseline_prompt():
    text = render(PAPER, "direct", "What is the plate number?", CHOICES)
    assert text == ("<image>What is the plate number?\n" + CHOICE_BLOCK.rstrip("\n") + "\nOutput the coordinates of "
                    "the key image area relevant to the problem in JSON format. And put the answer letter (A, B, C, D, "
                    "or E) within \\boxed{}.")


def test_open_question_variant_still_asks_for_boxed():
    system = render(PAPER, "system", "q", None)
    assert system.endswith("provide the final answer enclosed within \\boxed{}.")
    crop = render(PAPER, "crop", "What does the sign say", None)
    assert "Question: What does the sign say. Carefully analyze" in crop
    assert "choices" not in crop and crop.endswith("provide the final answer enclosed within \\boxed{}.")
    assert render(PAPER, "direct", "What?", None).endswith("And put the answer within \\boxed{}.")


def test_choices_that_carry_their_own_letters_are_not_doubled():
    assert format_choices(["(A) red", "B. blue", "green"]) == (
        "The choices are listed below:\n(A) red\n(B) blue\n(C) green\n")
    assert format_choices(None) == "" and format_choices([]) == ""


def test_prompt_sets_are_data_selected_by_name():
    assert get_prompts() is PAPER and "mgpo" in names()
    custom = with_name(PAPER, "terse", grounding="<image>{question} Box it in JSON.")
    register(custom)
    assert render(get_prompts("terse"), "grounding", "Where", None) == "<image>Where. Box it in JSON."
    with pytest.raises(ValueError, match="unknown prompt set"):
        get_prompts("nope")


def test_split_image():
    assert split_image("a\n<image>\nb") == ["a\n", None, "\nb"]
    assert split_image("<image>Question: x") == [None, "Question: x"]


def test_user_message_puts_each_image_where_its_marker_is():
    msg = user_message("a <image> b <image>", ["img1", "img2"])
    assert msg == {"role": "user", "content": [{"type": "text", "text": "a "}, {"type": "image", "image": "img1"},
                                               {"type": "text", "text": " b "}, {"type": "image", "image": "img2"}]}
