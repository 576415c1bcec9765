"""Every report of a run (each validation and checkpoint: step, epoch, losses, samples/s, data wait, and the
checkpoint folder it registered), kept for `metrics.json`, where Ray Train's result holds only the last report and the best checkpoints'.

    history = ReportHistory(run_dir.child("train", HISTORY_FILE))   # driver: into RunConfig(callbacks=…)
    metrics["history"] = read_history(run_dir.child("train", HISTORY_FILE))

The callback runs in Ray Train's controller and rewrites the file (a local path or a URI) after each report,
so the history survives the controller; a resubmitted run keeps the reports before the step it resumes at.
"""

from __future__ import annotations

from ray.train import UserCallback

from pipelines.storage import Location
from pipelines.training.trainer import is_number

HISTORY_FILE = "history.json"


class ReportHistory(UserCallback):
    """After each report, rank 0's numeric figures and the checkpoint's folder name appended to the list in
    `location` (JSON)."""

    def __init__(self, location: str | Location) -> None:
        self.location = str(location)
        self.reports: list[dict] | None = None

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        report = {name: value for name, value in metrics[0].items() if is_number(value)}
        if checkpoint is not None:
            report["checkpoint"] = checkpoint.path.rstrip("/").rsplit("/", 1)[-1]
        if self.reports is None:  # first report of this controller: keep a resumed run's earlier ones
            self.reports = [r for r in read_history(self.location) if r.get("step", 0) < report.get("step", 0)]
        self.reports.append(report)
        Location.of(self.location).write_json(self.reports)


def read_history(location: str | Location) -> list[dict]:
    """The reports written so far; none when the file does not exist."""
    location = Location.of(location)
    return location.read_json() if location.is_file() else []
