"""After a sweep: a row per trial (CSV + markdown), the metric against each swept parameter (PNG), and
the best finished trial's export copied to a stable path.

    rows = trial_rows(result_grid, swept, Location.of("runs/sweep/trials"))   # status, parameters, figures
    best = copy_best(rows, Location.of("s3://bucket/sweep/best"))           # the best finished trial's export

Every output is a `pipelines.storage.Location`: a local folder or one in an object store.
"""

from __future__ import annotations

import io
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipelines.storage import Location
from pipelines.training.launch import EXPORT_DIR, METRICS_FILE

METRIC = "val_macro_auroc"


def trial_rows(result_grid, swept: Sequence[str], runs_dir: Location) -> list[dict]:
    """One dict per trial: trial id, status (finished / stopped early / failed), the swept values, the
    last reported and the best val macro AUROC, epochs reached, and its export (finished only)."""
    rows = []
    for result in result_grid:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        run_dir = runs_dir.child(trial_id)
        finished = not result.error and run_dir.child(METRICS_FILE).is_file()
        summary = run_dir.child(METRICS_FILE).read_json() if finished else {}
        last = result.metrics or {}
        status = "failed" if result.error else ("finished" if finished else "stopped early")
        rows.append(
            {
                "trial": trial_id,
                "status": status,
                **{field: (result.config or {}).get("overrides", {}).get(field) for field in swept},
                "last_" + METRIC: last.get(METRIC, math.nan),
                "best_" + METRIC: summary.get("best", {}).get(METRIC, last.get(METRIC, math.nan)),
                "epochs": last.get("epoch", 0),
                "export": run_dir.child(EXPORT_DIR).uri if finished else "",
                "error": _first_line(result.error) if result.error else "",
            }
        )
    return rows


def copy_best(rows: list[dict], destination: Location) -> dict | None:
    """Copy the export of the finished trial with the best val AUROC to `destination` (replacing it; through
    a local temporary folder, so from and to an object store alike); returns that row, or None when no trial
    finished."""
    finished = [row for row in rows if row["status"] == "finished" and not math.isnan(row["best_" + METRIC])]
    if not finished:
        return None
    best = max(finished, key=lambda row: row["best_" + METRIC])
    destination.delete()
    with tempfile.TemporaryDirectory(prefix="ecg-fm-best-") as local:
        Location.of(best["export"]).download_to(local)
        destination.upload_from(local)
    destination.child("sweep_trial.json").write_json(best, default=str)
    return best


def write_tables(rows: list[dict], output: Location) -> None:
    """results.csv and results.md, best first."""
    frame = pd.DataFrame(rows).sort_values("best_" + METRIC, ascending=False, na_position="last")
    output.child("results.csv").write_text(frame.to_csv(index=False))
    shown = frame.drop(columns=["export"])
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + " --- |" * len(shown.columns)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in shown.itertuples(index=False)]
    output.child("results.md").write_text("\n".join(lines) + "\n")


def plot_metric_against_parameters(rows: list[dict], space: dict[str, dict], path: Location) -> None:
    """One panel per swept parameter of `space`: each trial's best val macro AUROC against its value
    (failed trials left out; trials ASHA stopped drawn hollow; loguniform axes in log scale)."""
    swept = [field for field, spec in space.items() if "fixed" not in spec]
    columns = min(3, max(1, len(swept)))
    panel_rows = math.ceil(len(swept) / columns) or 1
    figure = Figure(figsize=(4 * columns, 3 * panel_rows), dpi=100)
    for i, field in enumerate(swept):
        axes = figure.add_subplot(panel_rows, columns, i + 1)
        for status, style in (
            ("finished", dict(color="C0")),
            ("stopped early", dict(facecolor="none", edgecolor="C1")),
        ):
            points = [(row[field], row["best_" + METRIC]) for row in rows if row["status"] == status]
            if points:
                x, y = zip(*points)
                axes.scatter(_numeric(x), y, label=status, **style)
        if "loguniform" in space[field]:
            axes.set_xscale("log")
        axes.set(xlabel=field, ylabel="val macro AUROC")
        if i == 0 and axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png")
    path.write_bytes(png.getvalue())


def _numeric(values) -> list:
    return [float(v) if isinstance(v, bool | int | float | np.number) else str(v) for v in values]


def _cell(value) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "/")


def _first_line(error) -> str:
    return str(error).strip().splitlines()[-1][:200] if str(error).strip() else type(error).__name__
