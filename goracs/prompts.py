"""Prompt templates (method.md sections 4-5): data in configs/prompt/<set>.yaml, resolved per dataset and task.

A template is the header, the frame (where the header, the instruction and the input go, up to and including the
response header), the task's instruction, its input format (how the history titles and the target are written) and
its response (SeqRec: the target title; CTR: the two answers). The prepare stage formats every sample's input and
output with it and stores the resolved template in each sample frame (column `prompt_template`, one value per
frame), so that training, the signals and evaluation all render a sample's prompt through `render_prompt` /
`sample_prompts` from the same template, and the template text is part of the prepared samples' cache key.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

from goracs.tasks import TASKS

TEMPLATE_COLUMN = "prompt_template"

# the fields each part of a template must contain ({name} placeholders) and may contain
_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "header": ((), ()),
    "frame": (("instruction", "input"), ("header", "instruction", "input")),
    "item": (("title",), ("title",)),
    "separator": ((), ()),
    "empty": ((), ()),
    "instruction": ((), ()),
    "input:seqrec": (("history",), ("history",)),
    "input:ctr": (("liked", "disliked", "target"), ("liked", "disliked", "target")),
    "response": (("target",), ("target",)),
    "positive": ((), ()),
    "negative": ((), ()),
}
SET_KEYS = ("header", "frame", "item", "separator", "empty")  # set-wide, a task block may override them
TASK_KEYS = {"seqrec": ("instruction", "input", "response"), "ctr": ("instruction", "input", "positive", "negative")}
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")

# The generic prompts (configs/prompt/default.yaml holds the same data; a test keeps the two equal). Frames that
# carry no template column (hand-built test frames) are rendered with these.
DEFAULT_SET: dict[str, Any] = {
    "name": "default",
    "header": "Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.",
    "frame": "{header}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    "item": '"{title}"',
    "separator": ", ",
    "empty": "none",
    "aliases": {},
    "domains": {
        "default": {
            "seqrec": {
                "instruction": "Given a list of items the user has interacted with in chronological order, "
                               "predict the title of the next item the user will interact with.",
                "input": "The user has interacted with: {history}",
                "response": '"{target}"',
            },
            "ctr": {
                "instruction": "Given the user's preferences and unpreferences, identify whether the user will "
                               'like the target item by only answering "Yes." or "No.".',
                "input": 'User Preference: {liked}\nUser Unpreference: {disliked}\n'
                         'Whether the user will like the target item "{target}"?',
                "positive": "Yes.",
                "negative": "No.",
            },
        },
    },
}


class PromptError(ValueError):
    """A prompt set or template that cannot be used; the message names the set, the dataset, the task and the field."""


def _fill(fmt: str, values: Mapping[str, str]) -> str:
    """Substitute {name} placeholders in one pass (substituted text, e.g. a title with braces, is never re-read)."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], fmt)


@dataclass(frozen=True)
class PromptTemplate:
    """One resolved template: a prompt set's text for one dataset (domain) and one task."""

    set: str
    domain: str
    task: str
    header: str
    frame: str
    item: str
    separator: str
    empty: str
    instruction: str
    input: str
    response: str = ""   # SeqRec: the response with the {target} title
    positive: str = ""   # CTR: the answer for a liked target (label 1)
    negative: str = ""   # CTR: the answer otherwise (label 0)

    # -- rendering ------------------------------------------------------------------------------------------------
    def prompt(self, instruction: str, input_text: str) -> str:
        """The model's prompt up to and including the response header (what generation starts from)."""
        return _fill(self.frame, {"header": self.header, "instruction": str(instruction), "input": str(input_text)})

    def titles(self, titles: Sequence[str]) -> str:
        """A list of titles as the input shows it (the `empty` text for no title)."""
        if not titles:
            return self.empty
        return self.separator.join(_fill(self.item, {"title": str(t)}) for t in titles)

    def seqrec_input(self, history_titles: Sequence[str]) -> str:
        """The input field of a SeqRec sample: the history titles, oldest first."""
        return _fill(self.input, {"history": self.titles(history_titles)})

    def ctr_input(self, liked: Sequence[str], disliked: Sequence[str], target: str) -> str:
        """The input field of a CTR sample: liked and disliked history titles and the target title."""
        return _fill(self.input, {"liked": self.titles(liked), "disliked": self.titles(disliked),
                                  "target": str(target)})

    def seqrec_response(self, title: str) -> str:
        """The SeqRec response: the target title as the template writes it."""
        return _fill(self.response, {"target": str(title)})

    def ctr_response(self, label: int) -> str:
        """The CTR response: the positive answer for a liked target (label 1), the negative one otherwise."""
        return self.positive if int(label) == 1 else self.negative

    def answers(self) -> dict[str, int]:
        """CTR answer text -> label."""
        return {self.positive: 1, self.negative: 0}

    # -- identity -------------------------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, str]:
        """Every field (the text that enters the prompts): part of the prepared samples' cache key."""
        return asdict(self)

    def to_json(self) -> str:
        """The value stored in a sample frame's `prompt_template` column."""
        return json.dumps(self.as_dict(), sort_keys=True, ensure_ascii=False)

    @staticmethod
    def from_json(text: str) -> "PromptTemplate":
        """The template stored in a sample frame (memoised: every sample of a frame holds the same text)."""
        return _from_json(str(text))


@lru_cache(maxsize=64)
def _from_json(text: str) -> PromptTemplate:
    try:
        d = json.loads(text)
        return _checked(PromptTemplate(**d))
    except (TypeError, ValueError) as e:
        if isinstance(e, PromptError):
            raise
        raise PromptError(f"unreadable prompt template in a sample frame ({e}): {text[:200]!r}") from e


def _where(set_name: str, domain: str, task: str) -> str:
    return f"prompt template '{set_name}' (dataset {domain}, task {task})"


def _check_text(where: str, field: str, value: Any, spec: str) -> None:
    if not isinstance(value, str):
        raise PromptError(f"{where}: field '{field}' must be text, got {type(value).__name__}")
    required, allowed = _FIELDS[spec]
    used = set(_PLACEHOLDER.findall(value))
    missing = [f for f in required if f not in used]
    if missing:
        raise PromptError(f"{where}: field '{field}' lacks the required placeholder(s) "
                          f"{', '.join('{' + m + '}' for m in missing)} (it is {value!r})")
    unknown = sorted(used - set(allowed))
    if unknown:
        raise PromptError(f"{where}: field '{field}' has unknown placeholder(s) "
                          f"{', '.join('{' + u + '}' for u in unknown)}; allowed: "
                          f"{', '.join('{' + a + '}' for a in allowed) or 'none'}")


def _checked(t: PromptTemplate) -> PromptTemplate:
    where = _where(t.set, t.domain, t.task)
    if t.task not in TASKS:
        raise PromptError(f"{where}: unknown task (expected one of {TASKS})")
    for f in SET_KEYS + TASK_KEYS[t.task]:
        _check_text(where, f, getattr(t, f), f"input:{t.task}" if f == "input" else f)
    if t.task == "ctr":
        if not t.positive.strip() or not t.negative.strip():
            raise PromptError(f"{where}: the answers 'positive' and 'negative' must not be empty")
        if t.positive.strip() == t.negative.strip():
            raise PromptError(f"{where}: the answers 'positive' and 'negative' are the same ({t.positive!r})")
    return t


def _plain(cfg: Any) -> dict:
    if cfg is None:
        return DEFAULT_SET
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(cfg, Mapping):
        raise PromptError(f"a prompt set must be a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def resolve_template(prompt_cfg: Any = None, dataset: str = "default", task: str = "seqrec") -> PromptTemplate:
    """The template of one dataset and task in a prompt set (a `prompt` config; None = the generic default set).

    The dataset's domain is its own name if the set has prompts for it, else `aliases[name]`, else the set's
    `default` domain; set-wide fields (header, frame, item, separator, empty) apply unless the task block sets them.
    Fails, naming the set, the dataset, the task and the field, on anything missing or malformed."""
    cfg = _plain(prompt_cfg)
    name = str(cfg.get("name", "?"))
    if task not in TASKS:
        raise PromptError(f"prompt template '{name}': unknown task '{task}' (expected one of {TASKS})")
    domains = cfg.get("domains") or {}
    aliases = cfg.get("aliases") or {}
    dataset = str(dataset)
    if dataset in domains:
        domain = dataset
    elif dataset in aliases:
        domain = str(aliases[dataset])
    elif "default" in domains:
        domain = "default"
    else:
        raise PromptError(f"prompt template '{name}' has no prompts for dataset '{dataset}' (domains: "
                          f"{sorted(domains)}; aliases: {dict(aliases)}); add the dataset or an alias to the set")
    where = _where(name, domain, task)
    if domain not in domains:
        raise PromptError(f"{where}: alias of dataset '{dataset}' names the missing domain '{domain}'")
    block = (domains[domain] or {}).get(task)
    if not isinstance(block, Mapping):
        raise PromptError(f"{where}: the set has no '{task}' block for this domain")
    merged = {k: cfg[k] for k in SET_KEYS if k in cfg}
    merged.update(block)
    needed = SET_KEYS + TASK_KEYS[task]
    missing = [k for k in needed if k not in merged or merged[k] is None]
    if missing:
        raise PromptError(f"{where}: missing field(s) {missing}")
    extra = sorted(set(merged) - set(needed))
    if extra:
        raise PromptError(f"{where}: unknown field(s) {extra}; a {task} template has {list(needed)}")
    return _checked(PromptTemplate(set=name, domain=domain, task=task, **{k: merged[k] for k in needed}))


DEFAULT_TEMPLATES = {t: resolve_template(None, "default", t) for t in TASKS}


# ---- one helper for every consumer: a sample's prompt text -----------------------------------------------------

def template_of(df, task: str | None = None) -> PromptTemplate:
    """The template a sample frame was built with (its `prompt_template` column); the generic default for a frame
    without that column (hand-built frames). Every sample of a frame shares one template (see sample_prompts)."""
    if df is not None and TEMPLATE_COLUMN in getattr(df, "columns", ()) and len(df):
        return PromptTemplate.from_json(df[TEMPLATE_COLUMN].iloc[0])
    return DEFAULT_TEMPLATES[task if task in TASKS else "seqrec"]


def render_prompt(instruction: str, input_text: str, source: Any = None) -> str:
    """A sample's prompt, up to and including the response header: `source` is the sample's frame (its template is
    used), a PromptTemplate, or None (the generic default template)."""
    tpl = source if isinstance(source, PromptTemplate) else template_of(source)
    return tpl.prompt(instruction, input_text)


def sample_prompts(df) -> list[str]:
    """The prompt of every sample of a frame (training, signals and evaluation all call this or render_prompt)."""
    if TEMPLATE_COLUMN in df.columns and len(df):
        n = df[TEMPLATE_COLUMN].nunique(dropna=False)
        if n != 1:
            raise PromptError(f"the sample frame mixes {n} prompt templates (column '{TEMPLATE_COLUMN}'); "
                              "samples built with different prompt sets cannot share a frame")
    tpl = template_of(df)
    return [tpl.prompt(i, x) for i, x in zip(df["instruction"], df["input"])]


# ---- the generic default template, for code and tests that build samples by hand -------------------------------

SEQREC_INSTRUCTION = DEFAULT_TEMPLATES["seqrec"].instruction
CTR_INSTRUCTION = DEFAULT_TEMPLATES["ctr"].instruction


def seqrec_input(history_titles: list[str]) -> str:
    """The default template's SeqRec input: the history titles, oldest first."""
    return DEFAULT_TEMPLATES["seqrec"].seqrec_input(history_titles)


def ctr_input(liked: list[str], disliked: list[str], target: str) -> str:
    """The default template's CTR input: liked and disliked history titles and the target title."""
    return DEFAULT_TEMPLATES["ctr"].ctr_input(liked, disliked, target)


def seqrec_response(title: str) -> str:
    """The default template's SeqRec response: the quoted target title."""
    return DEFAULT_TEMPLATES["seqrec"].seqrec_response(title)


def ctr_response(label: int) -> str:
    """The default template's CTR response: Yes. for a liked target (rating > 3), No. otherwise."""
    return DEFAULT_TEMPLATES["ctr"].ctr_response(label)
