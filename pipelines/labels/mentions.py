"""Which task classes a report text mentions: the phrase matcher behind clinical efficacy of drafted reports.

    mentions = LabelMentions(load_task("ptbxl-super"))
    mentions.codes_in("sinus rhythm. inferior myocardial infarction.")    # {"MI"}

A class's phrases are its name, its description, its prompts (templated prompts lose their full stop) and
the description of every raw statement code the task's label_map sends to it (PTB-XL's and the synthetic
generator's statement tables: the phrases label-built and synthetic reports are made of). Matching is
lower-case on word boundaries, longest phrase first, and a matched span is consumed: "incomplete right
bundle branch block" does not also count "right bundle branch block", nor "abnormal ecg" "normal ecg".
Statements the task leaves out are phrases that name no class: "voltage criteria (qrs) for left
ventricular hypertrophy" (VCLVH, no diagnostic class) is not a mention of left ventricular hypertrophy.
Texts and phrases are compared as word and punctuation tokens, so a draft decoded from word pieces
("inverted t - waves", "( qrs )") matches the phrase as written ("inverted t-waves", "(qrs)").
Negation ("no atrial fibrillation") is not understood: a phrase found is a class mentioned.
"""

from __future__ import annotations

import re
from functools import cache

from pipelines.labels.table_files import read_table
from pipelines.labels.tasks import Task

_TOKEN = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")


class LabelMentions:
    """Task class codes found in report texts, by phrase."""

    def __init__(self, task: Task) -> None:
        phrases: dict[str, set[str]] = {}
        for code, zero_shot_class in task.classes.items():
            for phrase in (zero_shot_class.name, zero_shot_class.description, *task.prompts_of(code)):
                _add(phrases, phrase, {code})
        for raw, descriptions in _statement_descriptions().items():
            for description in descriptions:  # a statement outside the task still consumes its span
                _add(phrases, description, set(task.label_map.get(raw, ())))
        ordered = sorted(phrases, key=lambda phrase: (-len(phrase), phrase))
        self._patterns = [
            (phrase, re.compile(rf"(?<![^ ]){re.escape(phrase)}(?![^ ])"), frozenset(phrases[phrase]))
            for phrase in ordered
        ]

    @property
    def phrases(self) -> dict[str, frozenset[str]]:
        """Phrase → the class codes it names, longest phrase first."""
        return {phrase: codes for phrase, _, codes in self._patterns}

    def codes_in(self, text: str | None) -> set[str]:
        """The task's class codes whose phrases occur in `text` (None or empty: none)."""
        text = word_tokens(text or "")
        consumed = bytearray(len(text))
        found: set[str] = set()
        for phrase, pattern, codes in self._patterns:
            if phrase not in text:
                continue
            for match in pattern.finditer(text):
                start, end = match.span()
                if not any(consumed[start:end]):
                    consumed[start:end] = b"\x01" * (end - start)
                    found |= codes
        return found


def _add(phrases: dict[str, set[str]], phrase: str, codes: set[str]) -> None:
    phrase = word_tokens(phrase).strip(" .")
    if phrase:
        phrases.setdefault(phrase, set()).update(codes)


def word_tokens(text: str) -> str:
    """Lower-case word and punctuation tokens joined by single spaces (what phrases match on, and what BLEU
    counts n-grams of): "T-waves." → "t - waves ."."""
    return " ".join(_TOKEN.findall(text.lower()))


@cache
def _statement_descriptions() -> dict[str, tuple[str, ...]]:
    """Raw statement code → its description(s) in the shipped PTB-XL and synthetic statement tables."""
    descriptions: dict[str, set[str]] = {}
    for code, statement in read_table("ptbxl")["statements"].items():
        descriptions.setdefault(code, set()).add(statement["description"])
    for statement in read_table("synthetic")["statements"]:
        descriptions.setdefault(statement["code"], set()).add(statement["description"])
    return {code: tuple(sorted(texts)) for code, texts in descriptions.items()}
