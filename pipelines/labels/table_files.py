"""The label tables shipped in `pipelines/labels/tables/`: PTB-XL's statements (`ptbxl.json`, from its
`scp_statements.csv`, CC-BY 4.0), the CinC scored classes (`cinc.json`) and the synthetic generator's
statements (`synthetic.json`, which the generator reads too: one table for what it draws and what the
`synthetic` task scores).

    statements = read_table("synthetic")["statements"]
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

TABLES_DIR = Path(__file__).parent / "tables"


@cache
def read_table(name: str) -> dict:
    """A shipped table by name (its file stem); treat the result as read-only."""
    return read_json(TABLES_DIR / f"{name}.json")


def read_json(path: Path):
    """A JSON file; ValueError naming the file when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a readable JSON file: {error}") from None
