"""One concept table across label systems (`tables/concepts.json`): PTB-XL's SCP-ECG statements (`scp`),
the SNOMED CT codes of the CinC 2020/2021 challenges (`snomed`, as strings, as shard labels store them) and
lower-case phrases of MIMIC-IV-ECG machine reports (`mimic`), each code mapped onto a shared concept.

    concept_of("snomed", "164889003").name          # "atrial fibrillation"
    concept_of("scp", "AFIB").name                  # "atrial fibrillation"
    concepts_named(["atrial fibrillation", "t wave inversion"])

The table is checked when loaded: unique names, known parents, one concept per code and system (a code
listed under the table's "shared" with its reason may name several), and a source for every system a
concept has codes in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pipelines.labels.table_files import TABLES_DIR, read_json

SYSTEMS = ("scp", "snomed", "mimic")
PARENTS = ("rhythm", "conduction", "morphology", "st-t", "hypertrophy", "infarction")
CONCEPTS_FILE = TABLES_DIR / "concepts.json"


@dataclass(frozen=True)
class Concept:
    name: str
    description: str
    """One clinical line."""
    parent: str
    """One of PARENTS."""
    codes: dict[str, tuple[str, ...]]
    """System (one of SYSTEMS) → its codes for this concept."""
    source: dict[str, str]
    """System → where the mapping comes from (the challenge's mapping file, PTB-XL's table, clinical judgement)."""


@cache
def concepts() -> dict[str, Concept]:
    """Concept name → concept, in table order (loaded and checked once)."""
    return parse_concepts(read_json(CONCEPTS_FILE), CONCEPTS_FILE)


def concepts_of(system: str, code: str) -> tuple[Concept, ...]:
    """The concepts a system's code names (one, or several for a code the table lists as shared)."""
    names = concept_names_by_code(system).get(code)
    if names is None:
        raise ValueError(f"unknown {system} code {code!r}: no concept in {CONCEPTS_FILE.name} maps it")
    return tuple(concepts()[name] for name in names)


def concept_of(system: str, code: str) -> Concept:
    """The one concept a system's code names; ValueError naming the code when it names none or several."""
    found = concepts_of(system, code)
    if len(found) > 1:
        raise ValueError(f"{system} code {code!r} names several concepts: {', '.join(c.name for c in found)}")
    return found[0]


def concepts_named(names: Iterable[str]) -> list[Concept]:
    """The concepts of these names, in the order given; ValueError naming every unknown name."""
    names = list(names)
    table = concepts()
    unknown = [name for name in names if name not in table]
    if unknown:
        raise ValueError(f"unknown concept(s) {', '.join(map(repr, unknown))}: see {CONCEPTS_FILE.name}")
    return [table[name] for name in names]


@cache
def concept_names_by_code(system: str) -> dict[str, tuple[str, ...]]:
    """Every code of `system` in the table → the names of the concepts it maps to (one, or several for a
    shared code), in table order; ValueError naming an unknown system."""
    if system not in SYSTEMS:
        raise ValueError(f"unknown label system {system!r}: use one of {', '.join(SYSTEMS)}")
    index: dict[str, tuple[str, ...]] = {}
    for concept in concepts().values():
        for code in concept.codes[system]:
            index[code] = (*index.get(code, ()), concept.name)
    return index


def parse_concepts(data: object, path: Path) -> dict[str, Concept]:
    """Check a concept table's JSON and build its concepts; ValueError naming the file and the entry."""
    if not isinstance(data, dict) or not isinstance(data.get("concepts"), list) or not data["concepts"]:
        raise ValueError(f"{path}: a concept table needs a non-empty 'concepts' list")
    shared = data.get("shared", {})
    if not isinstance(shared, dict):
        raise ValueError(f"{path}: 'shared' must be an object {{'system:code': reason}}")
    table: dict[str, Concept] = {}
    owner: dict[tuple[str, str], str] = {}
    for entry in data["concepts"]:
        concept = _concept(entry, path)
        if concept.name in table:
            raise ValueError(f"{path}: concept {concept.name!r} appears twice")
        for system, codes in concept.codes.items():
            for code in codes:
                first = owner.setdefault((system, code), concept.name)
                if first != concept.name and f"{system}:{code}" not in shared:
                    raise ValueError(
                        f"{path}: {system} code {code!r} maps to both {first!r} and {concept.name!r}; list "
                        f"'{system}:{code}' under 'shared' with the reason if that is meant"
                    )
        table[concept.name] = concept
    return table


def _concept(entry: object, path: Path) -> Concept:
    if not isinstance(entry, dict) or not str(entry.get("name", "")).strip():
        raise ValueError(f"{path}: every concept needs a 'name' (got {entry!r:.80})")
    name = entry["name"]
    if not str(entry.get("description", "")).strip():
        raise ValueError(f"{path}: concept {name!r} needs a 'description'")
    if entry.get("parent") not in PARENTS:
        raise ValueError(
            f"{path}: concept {name!r} has parent {entry.get('parent')!r}, not one of {', '.join(PARENTS)}"
        )
    raw_codes, source = entry.get("codes"), entry.get("source", {})
    if not isinstance(raw_codes, dict) or set(raw_codes) - set(SYSTEMS):
        raise ValueError(f"{path}: concept {name!r}: 'codes' is an object keyed by {', '.join(SYSTEMS)}")
    codes = {}
    for system in SYSTEMS:
        listed = raw_codes.get(system, [])
        if not isinstance(listed, list) or not all(isinstance(code, str) and code.strip() for code in listed):
            raise ValueError(f"{path}: concept {name!r}: {system} codes must be a list of non-empty strings")
        if listed and not str(source.get(system, "")).strip():
            raise ValueError(f"{path}: concept {name!r}: its {system} codes need a 'source'")
        codes[system] = tuple(listed)
    if not any(codes.values()):
        raise ValueError(f"{path}: concept {name!r} has no codes in any system")
    return Concept(name, entry["description"], entry["parent"], codes, dict(source))
