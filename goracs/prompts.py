"""Alpaca-style prompts for the two tasks (method.md sections 4-5), shared by signals, training and evaluation."""

from __future__ import annotations

SEQREC_INSTRUCTION = (
    "Given a list of items the user has interacted with in chronological order, "
    "predict the title of the next item the user will interact with."
)
CTR_INSTRUCTION = (
    "Given the user's preferences and unpreferences, identify whether the user will like the target item "
    'by only answering "Yes." or "No.".'
)

HEADER = "Below is an instruction that describes a task, paired with an input that provides further context. " \
         "Write a response that appropriately completes the request.\n\n"


def seqrec_input(history_titles: list[str]) -> str:
    """The input field of a SeqRec sample: the history titles, oldest first."""
    return "The user has interacted with: " + ", ".join(f'"{t}"' for t in history_titles)


def ctr_input(liked: list[str], disliked: list[str], target: str) -> str:
    """The input field of a CTR sample: liked and disliked history titles and the target title."""
    likes = ", ".join(f'"{t}"' for t in liked) or "none"
    dislikes = ", ".join(f'"{t}"' for t in disliked) or "none"
    return (f"User Preference: {likes}\nUser Unpreference: {dislikes}\n"
            f'Whether the user will like the target item "{target}"?')


def render_prompt(instruction: str, input_text: str) -> str:
    """The model's prompt up to and including the response header (what generation starts from)."""
    return f"{HEADER}### Instruction:\n{instruction}\n\n### Input:\n{input_text}\n\n### Response:\n"


def seqrec_response(title: str) -> str:
    """The SeqRec response: the quoted target title."""
    return f'"{title}"'


def ctr_response(label: int) -> str:
    """The CTR response: Yes for a liked target (rating > 3), No otherwise."""
    return "Yes." if int(label) == 1 else "No."
