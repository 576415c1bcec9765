"""Synthetic 12-lead ECGs with known labels and reports: the project's embedded default data.

A cardiac dipole (sums of Gaussian waves per beat) projected to the 12 leads, with controllable
rhythm, conduction, axis, voltage, ST-T and ectopy conditions, written in PTB-XL's layout so the
default path runs the same reader as real data. `python -m pipelines.synthetic --help` for the CLI.
"""

from pipelines.synthetic.conditions import CODES, STATEMENTS, SyntheticConfig, report_from_codes, sample_conditions
from pipelines.synthetic.dipole import LEAD_NAMES, dipole_to_leads, measured_leads, twelve_leads
from pipelines.synthetic.generate import generate_batch
from pipelines.synthetic.ptbxl_layout import generate_ptbxl_layout, write_chunk, write_tables

__all__ = [
    "CODES",
    "LEAD_NAMES",
    "STATEMENTS",
    "SyntheticConfig",
    "dipole_to_leads",
    "generate_batch",
    "generate_ptbxl_layout",
    "measured_leads",
    "report_from_codes",
    "sample_conditions",
    "twelve_leads",
    "write_chunk",
    "write_tables",
]
