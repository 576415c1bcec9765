"""Classification tasks over shard rows: their classes, and how a row's raw label codes map onto them.

    task = load_task("ptbxl-super")          # or any other of TASK_NAMES
    task = load_task("my_classes.csv")       # a user's class table
    targets = task.targets(label_lists)      # bool [n, C] in task.codes order

PTB-XL tasks follow Strodthoff et al. (2021): superclass (5) and subclass (23) from the diagnostic
statements' `diagnostic_class` / `diagnostic_subclass`, form (19) and rhythm (12) from their flags,
read from the shipped `tables/ptbxl.json` (PTB-XL's `scp_statements.csv`, CC-BY 4.0). `cinc` covers
the scored SNOMED-CT classes of the CinC 2020/2021 challenges (`tables/cinc.json`). `concepts` scores the
concepts of `tables/concepts.json` from SCP codes, SNOMED codes or MIMIC report phrases alike.

A user's class table is JSON, `{"classes": {code: {"name": …, "description": …}}, "label_map":
{raw code: [class codes]}, "templates": [...]}` (label_map and templates optional; a class is always
its own raw code too), or CSV with columns `code,name,description` and optionally `source_codes`
(raw codes separated by `;` or `|`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import numpy as np

from models.zero_shot import ZeroShotClass, class_prompts
from pipelines.labels.classes import LABEL_TABLE, REPORT_TEMPLATES
from pipelines.labels.concepts import SYSTEMS, concept_names_by_code, concepts
from pipelines.labels.table_files import TABLES_DIR, read_json, read_table

TASK_NAMES = ("ptbxl-super", "ptbxl-sub", "ptbxl-form", "ptbxl-rhythm", "cinc", "synthetic", "concepts")
PUBLISHED = {
    "ptbxl-super": {"MERL": 74.2, "C-MELT": 76.2},
    "ptbxl-sub": {"MERL": 75.7, "C-MELT": 75.9},
    "ptbxl-form": {"MERL": 65.9, "C-MELT": 66.1},
    "ptbxl-rhythm": {"MERL": 78.5, "C-MELT": 88.6},
    "cinc": {"MERL": 82.8, "C-MELT": 80.1},
}
"""Published zero-shot macro AUROC (%), pretrained on MIMIC-IV-ECG (~771k pairs). `cinc` carries the
CPSC2018 figures: CPSC2018 is one of the CinC sources, so that match is approximate."""


@dataclass(frozen=True)
class Task:
    """A multi-label task: classes (code → name + one-line description) and the raw-code mapping."""

    name: str
    classes: dict[str, ZeroShotClass]
    """Class code → class, in display order."""
    label_map: dict[str, tuple[str, ...]]
    """Raw source label code → the class codes it implies."""
    templates: tuple[str, ...] = REPORT_TEMPLATES
    published: dict[str, float] = field(default_factory=dict)
    """Published zero-shot macro AUROC (%) by method; empty where no paper reports this task."""
    prompts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """User prompts replacing the templated ones, for the classes they name."""

    @property
    def codes(self) -> list[str]:
        return list(self.classes)

    def row_classes(self, labels: Iterable[str]) -> set[str]:
        """The task classes of one row's raw label codes."""
        return {code for label in labels for code in self.label_map.get(label, ())}

    def targets(self, label_lists: Sequence[Iterable[str]]) -> np.ndarray:
        """bool [n, C]: row i, column c is True when class codes[c] follows from row i's raw labels."""
        index = {code: c for c, code in enumerate(self.classes)}
        targets = np.zeros((len(label_lists), len(index)), dtype=bool)
        for i, labels in enumerate(label_lists):
            for code in self.row_classes(labels):
                targets[i, index[code]] = True
        return targets

    def present_codes(self, label_lists: Sequence[Iterable[str]]) -> list[str]:
        """Codes with at least one positive and one negative among the rows (AUROC is defined only for
        those), in task order."""
        counts = self.targets(label_lists).sum(axis=0)
        return [code for code, count in zip(self.codes, counts) if 0 < count < len(label_lists)]

    def prompts_of(self, code: str) -> list[str]:
        """The prompts whose embeddings are averaged into class `code`'s zero-shot weight."""
        return list(self.prompts.get(code) or class_prompts(self.classes[code], self.templates))

    def with_prompts(self, path: str | os.PathLike) -> Task:
        """Replace the prompts of the classes named in a JSON file `{code: [prompt, ...]}`."""
        data = read_json(Path(path))
        if not isinstance(data, dict) or not data:
            raise ValueError(f"{path}: a prompt file is a JSON object {{class code: [prompt, ...]}}")
        prompts = {}
        for code, texts in data.items():
            if code not in self.classes:
                raise ValueError(f"{path}: class {code!r} is not a class of task {self.name}")
            if isinstance(texts, str):
                texts = [texts]
            if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
                raise ValueError(f"{path}: class {code!r} needs a non-empty list of prompt strings")
            prompts[code] = tuple(texts)
        return replace(self, prompts={**self.prompts, **prompts})


def load_task(name_or_path: str | os.PathLike) -> Task:
    """A built-in task by name, or a user's class table (.json / .csv) by path."""
    name = str(name_or_path)
    if name in TASK_NAMES:
        return _builtin(name)
    path = Path(name)
    if path.suffix.lower() not in (".json", ".csv"):
        raise ValueError(f"unknown task {name!r}: use one of {', '.join(TASK_NAMES)}, or a .json / .csv class table")
    if not path.is_file():
        raise ValueError(f"class table {path} does not exist")
    return _from_csv(path) if path.suffix.lower() == ".csv" else _from_json(path)


@cache
def _builtin(name: str) -> Task:
    if name == "synthetic":
        return Task("synthetic", dict(LABEL_TABLE), {code: (code,) for code in LABEL_TABLE})
    if name == "cinc":
        return _from_json(TABLES_DIR / "cinc.json", name="cinc", published=PUBLISHED["cinc"])
    if name == "concepts":
        return _concepts_task()
    table = read_table("ptbxl")
    statements = table["statements"]
    if name in ("ptbxl-super", "ptbxl-sub"):
        level, key = (
            ("superclasses", "diagnostic_class") if name == "ptbxl-super" else ("subclasses", "diagnostic_subclass")
        )
        classes = {code: ZeroShotClass(**entry) for code, entry in table[level].items()}
        label_map = {code: (s[key],) for code, s in statements.items() if s[key]}
        members = {code: [s["description"].lower() for s in statements.values() if s[key] == code] for code in classes}
        prompts = {
            code: (
                *class_prompts(classes[code], REPORT_TEMPLATES),
                *(t.format(m) for m in members[code] for t in REPORT_TEMPLATES),
            )
            for code in classes
        }
        return Task(name, classes, label_map, published=PUBLISHED[name], prompts=prompts)
    flag = name.removeprefix("ptbxl-")
    classes = {
        code: ZeroShotClass(s["description"].lower(), table["statement_descriptions"][code])
        for code, s in statements.items()
        if s[flag]
    }
    return Task(name, classes, {code: (code,) for code in classes}, published=PUBLISHED[name])


def _concepts_task() -> Task:
    """Classes: the concepts of `tables/concepts.json` (code = name); every SCP code, SNOMED code and MIMIC
    phrase the table lists maps to its concept(s), so shards labelled in any of those systems score alike.
    A concept's MIMIC phrases join its prompts (as PTB-XL statement descriptions do for ptbxl-super)."""
    table = concepts()
    classes = {name: ZeroShotClass(name, concept.description) for name, concept in table.items()}
    raw_map: dict[str, list[str]] = {}
    for system in SYSTEMS:
        for code, names in concept_names_by_code(system).items():
            raw_map.setdefault(code, []).extend(names)
    prompts = {
        name: (
            *class_prompts(classes[name], REPORT_TEMPLATES),
            *(t.format(phrase) for phrase in concept.codes["mimic"] if phrase != name for t in REPORT_TEMPLATES),
        )
        for name, concept in table.items()
    }
    return Task("concepts", classes, _label_map(classes, raw_map, TABLES_DIR / "concepts.json"), prompts=prompts)


def _from_json(path: Path, name: str | None = None, published: dict[str, float] | None = None) -> Task:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("classes"), dict) or not data["classes"]:
        raise ValueError(f"{path}: a class table needs a non-empty 'classes' object {{code: {{name, description}}}}")
    classes = {}
    for code, entry in data["classes"].items():
        if not isinstance(entry, dict) or not str(entry.get("name", "")).strip():
            raise ValueError(f"{path}: class {code!r} needs a 'name'")
        classes[code] = ZeroShotClass(entry["name"], entry.get("description", ""))
    raw_map = data.get("label_map", {})
    if not isinstance(raw_map, dict):
        raise ValueError(f"{path}: 'label_map' must be an object {{raw code: [class codes]}}")
    raw_map = {raw: [codes] if isinstance(codes, str) else codes for raw, codes in raw_map.items()}
    for raw, codes in raw_map.items():
        if not isinstance(codes, list) or not all(isinstance(code, str) for code in codes):
            raise ValueError(f"{path}: label_map entry {raw!r} must be a class code or a list of class codes")
    label_map = _label_map(classes, raw_map, path)
    templates = tuple(data.get("templates") or REPORT_TEMPLATES)
    if not all(isinstance(t, str) and "{}" in t for t in templates):
        raise ValueError(f"{path}: every template needs a '{{}}' placeholder")
    return Task(name or path.stem, classes, label_map, templates, published or {})


def _from_csv(path: Path) -> Task:
    with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheet exports start with a BOM
        reader = csv.DictReader(handle)
        missing = {"code", "name"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))} (columns: code,name,description)")
        classes, raw_map = {}, {}
        for line, row in enumerate(reader, start=2):
            code, class_name = (row.get("code") or "").strip(), (row.get("name") or "").strip()
            if not code or not class_name:
                raise ValueError(f"{path}, line {line}: empty code or name")
            if code in classes:
                raise ValueError(f"{path}, line {line}: class {code!r} appears twice")
            classes[code] = ZeroShotClass(class_name, (row.get("description") or "").strip())
            for raw in (row.get("source_codes") or "").replace("|", ";").split(";"):
                if raw.strip():
                    raw_map.setdefault(raw.strip(), []).append(code)
    if not classes:
        raise ValueError(f"{path}: the class table has no rows")
    return Task(path.stem, classes, _label_map(classes, raw_map, path))


def _label_map(
    classes: dict[str, ZeroShotClass], raw_map: dict[str, list[str]], path: Path
) -> dict[str, tuple[str, ...]]:
    """Each class is its own raw code; `raw_map` adds source codes (which must name known classes)."""
    label_map = {code: (code,) for code in classes}
    for raw, codes in raw_map.items():
        unknown = [code for code in codes if code not in classes]
        if unknown:
            raise ValueError(f"{path}: label_map entry {raw!r} names unknown class(es) {', '.join(unknown)}")
        label_map[raw] = tuple(dict.fromkeys([*label_map.get(raw, ()), *codes]))
    return label_map
