"""What a model was trained with: its shards' preprocessing and the label task its validation scored.

Prepare writes the preprocessing into each dataset's `manifest.json`; pretraining reads it from every
shard folder (refusing folders that disagree), and the export's `config.json` carries it as
`trained_with`, so serving, batch scoring and evaluation feed the model what it was trained on.

    trained_with = TrainedWith.of_shards(["data/ptbxl", "data/synthetic"], task="ptbxl-super")  # pretraining
    trained_with = TrainedWith.of_model(model)        # serve / score / evaluate, from the export
    trained_with.check_shards(["data/other"])         # refuses shards preprocessed otherwise
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields

from models.model import read_saved_config
from pipelines.data.leads import STANDARD_LEADS
from pipelines.data.preprocess import PreprocessConfig
from pipelines.data.shard_files import MANIFEST_FILE, read_manifest

log = logging.getLogger(__name__)

SIGNAL_FIELDS = ("fs", "seconds", "normalize", "bandpass", "leads")
"""What makes two datasets' signals the same kind of input; the other preprocessing fields are the rules
for rejecting and repairing records."""
DEFAULT_TASK = "synthetic"


@dataclass(frozen=True)
class TrainedWith:
    preprocessing: PreprocessConfig
    task: str = DEFAULT_TASK
    """The label task (a name or a class-table path) whose classes validation scored."""
    data: tuple[str, ...] = ()
    """The shard folders the model was trained on."""

    def to_dict(self) -> dict:
        return {
            "preprocessing": {**self.preprocessing.to_dict(), "leads": list(STANDARD_LEADS)},
            "task": self.task,
            "data": list(self.data),
        }

    @classmethod
    def from_dict(cls, record: dict, where: str) -> TrainedWith:
        """From `to_dict`'s form; ValueError naming `where` and the field when it is not."""
        try:
            preprocessing = _preprocess_config(record["preprocessing"], where)
            return cls(preprocessing, str(record.get("task") or DEFAULT_TASK), tuple(record.get("data") or ()))
        except (KeyError, TypeError) as error:
            raise ValueError(f"{where}: trained_with is malformed ({type(error).__name__}: {error})") from None

    @classmethod
    def of_model(cls, model) -> TrainedWith:
        """What an `ECGTextModel` records (see `recorded`)."""
        return cls.recorded(model.trained_with, model.config.ecg.n_samples)

    @classmethod
    def of_export(cls, directory: str) -> TrainedWith:
        """What an export records, from its config.json alone (no model is built)."""
        saved = read_saved_config(directory)
        return cls.recorded(saved.trained_with, saved.model.ecg.n_samples)

    @classmethod
    def recorded(cls, record: dict | None, n_samples: int) -> TrainedWith:
        """From an export's `trained_with` record; an export from before the record existed (None) gets the
        defaults of its time (500 Hz, the ECG tower's `n_samples`, per-record min-max, no band-pass; the
        synthetic task) and a warning."""
        if record is not None:
            return cls.from_dict(record, "the export's config.json")
        log.warning(
            "this export does not record its training data's preprocessing (it predates format 2): assuming "
            "500 Hz, %g s, per-record min-max, no band-pass, and the synthetic label task",
            n_samples / 500,
        )
        return cls(PreprocessConfig(fs=500, seconds=n_samples / 500))

    @classmethod
    def of_shards(cls, folders: Sequence[str], task: str = DEFAULT_TASK) -> TrainedWith:
        """The preprocessing every folder's manifest records; ValueError naming the folders and the field
        where two disagree."""
        manifests = {folder: read_manifest(folder) for folder in folders}
        first, *others = folders
        reference = _signal_fields(manifests[first])
        for folder in others:
            name = _first_difference(reference, found := _signal_fields(manifests[folder]))
            if name is not None:
                raise ValueError(
                    f"shard folders {first} and {folder} were prepared differently: preprocessing.{name} is "
                    f"{reference[name]!r} in one and {found[name]!r} in the other; prepare them alike to train on both"
                )
        preprocessing = _preprocess_config(manifests[first]["preprocessing"], f"{first}/{MANIFEST_FILE}")
        return cls(preprocessing, task, tuple(folders))

    def check_shards(self, folders: Sequence[str]) -> None:
        """Refuse shards whose preprocessing differs from this record's (their scores would be wrong)."""
        expected = _signal_fields({"preprocessing": self.to_dict()["preprocessing"]})
        for folder in folders:
            name = _first_difference(expected, found := _signal_fields(read_manifest(folder)))
            if name is not None:
                raise ValueError(
                    f"{folder} was prepared with preprocessing.{name} {found[name]!r}, but the model was trained on "
                    f"{expected[name]!r}; prepare the data as the model's training data was"
                )


def _signal_fields(manifest: dict) -> dict:
    preprocessing = manifest["preprocessing"]
    bandpass = preprocessing.get("bandpass")
    return {
        "fs": preprocessing.get("fs"),
        "seconds": preprocessing.get("seconds"),
        "normalize": preprocessing.get("normalize"),
        "bandpass": list(bandpass) if bandpass else None,
        "leads": list(preprocessing.get("leads") or STANDARD_LEADS),
    }


def _first_difference(expected: dict, found: dict) -> str | None:
    """The first of SIGNAL_FIELDS on which two `_signal_fields` records disagree, or None."""
    return next((name for name in SIGNAL_FIELDS if found[name] != expected[name]), None)


def _preprocess_config(record: dict, where: str) -> PreprocessConfig:
    """PreprocessConfig from a recorded dict; leads must be in the order this code arranges them."""
    leads = record.get("leads")
    if leads is not None and list(leads) != list(STANDARD_LEADS):
        raise ValueError(f"{where}: leads {leads} are not in the order this code arranges them ({STANDARD_LEADS})")
    known = {f.name for f in fields(PreprocessConfig)}
    values = {k: v for k, v in record.items() if k in known}
    if values.get("bandpass") is not None:
        values["bandpass"] = tuple(values["bandpass"])
    try:
        return PreprocessConfig(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: preprocessing is not valid: {error}") from None
