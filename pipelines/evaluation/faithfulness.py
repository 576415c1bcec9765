"""Does the evidence mean something? Deletion tests of `models.evidence.explain_score` on synthetic ECGs whose
cause is known (issue 16, point 5).

    figures = faithfulness_figures(model.eval(), Path("runs/x/eval"))      # JSON-ready, writes faithfulness.png
    lines = faithfulness_lines(figures)                                       # for report.md

Fresh synthetic ECGs (seed `seed`, not the training data's 0) go through the model's own preprocessing
(`TrainedWith.of_model(model).preprocessing`, the function shards and serving run); the records that have a
class are attributed with integrated gradients against that class's zero-shot vector (the task's prompts).
Then the top k % of samples by attribution, and as many random samples (seeded), are deleted and the ECG is
scored again, for k in DELETION_FRACTIONS:

- deletion replaces each deleted sample by linear interpolation, per lead, between the nearest kept samples
  on either side (a lead with nothing kept becomes its mean). Zeroing is not "no signal" once the shards are
  normalised (min-max puts the lowest sample of the record at 0, so zeros draw deep notches; z-scored leads
  have mean 0 but zeroing single samples inside a QRS draws spikes); interpolation removes the content of
  the deleted samples without adding edges the model could read as a wave.
- rate `deletion`: the share of ECGs whose score drops more when the top RATE_FRACTION is deleted than when
  a random RATE_FRACTION is (goal: at least 80 %);
- rate `overlap`: the share whose top segment (`Evidence.top_segments[0]`: its lead and [start, end)) touches
  the generator's own location of the abnormality (`pipelines.synthetic.locations`; goal: at least 60 %).
  AF's location is the whole record, so AF always overlaps: the overall rate is given with and without AF,
  and `chance_overlap` is the share of all segments of that length (every lead, every window) that touch
  the location: what a segment picked at random would reach.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from models.evidence import Evidence, explain_score
from models.model import ECGTextModel
from pipelines.data.preprocess import PreprocessConfig, preprocess
from pipelines.data.trained_with import TrainedWith
from pipelines.data.wfdb_io import Recording
from pipelines.evaluation.plots import DPI
from pipelines.labels.tasks import Task, load_task
from pipelines.labels.zero_shot import task_classifier
from pipelines.synthetic import LEAD_NAMES, SyntheticConfig, generate_batch
from pipelines.synthetic.locations import abnormality_mask

FAITHFUL_CLASSES = ("PVC", "AFIB", "CLBBB", "CRBBB", "STE_", "STD_")
"""Synthetic classes whose cause has a place in the signal."""
DELETION_FRACTIONS = (0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3)
RATE_FRACTION = 0.1
ORDERS = ("evidence", "random", "shifted")
"""Deletion orders: top attributed first; uniformly random samples; the evidence's own set shifted in time."""
DELETION_GOAL, OVERLAP_GOAL = 0.8, 0.6
SEGMENT_S = 0.5
"""Length of the top segment (explain_score's default: what the API returns)."""
PLOT_FILE = "faithfulness.png"
DEFAULT_SEED = 16
GENERATED_PER_DRAW = 256


def faithfulness_figures(
    model: ECGTextModel,
    output_dir: Path,
    *,
    classes: Sequence[str] = FAITHFUL_CLASSES,
    task: Task | None = None,
    n_per_class: int = 20,
    seed: int = DEFAULT_SEED,
    steps: int = 32,
    batch_size: int = 8,
) -> dict:
    """Deletion and overlap rates per class and overall, the mean deletion curves, and PLOT_FILE written to
    `output_dir`, for `n_per_class` synthetic positives of each of `classes` (codes of `task`, default the
    synthetic task, whose prompts give the class vectors). The model must be in eval mode."""
    task = task or load_task("synthetic")
    missing = [code for code in classes if code not in task.codes]
    if missing:
        raise ValueError(f"class(es) {', '.join(missing)} are not in task {task.name}")
    preprocessing = TrainedWith.of_model(model).preprocessing
    class_vectors = task_classifier(model, task, list(classes)).T.float().cpu()  # [C, D]
    positives = synthetic_positives(classes, n_per_class, preprocessing, seed)
    per_class = {
        code: _class_figures(
            model, *positives[code], code, class_vectors[c], preprocessing.fs, seed + c, steps, batch_size
        )
        for c, code in enumerate(classes)
    }
    without_af = [code for code in classes if code != "AFIB"]
    figures = {
        "classes": list(classes),
        "n_per_class": n_per_class,
        "seed": seed,
        "fractions": list(DELETION_FRACTIONS),
        "rate_fraction": RATE_FRACTION,
        "deletion": "linear interpolation per lead between the nearest kept samples",
        "per_class": {code: _rates([per_class[code]]) for code in classes},
        "overall": _rates([per_class[code] for code in classes]),
        "overall_without_af": _rates([per_class[code] for code in without_af]) if without_af else None,
        "plot": PLOT_FILE,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    deletion_plot(figures, output_dir / PLOT_FILE)
    return figures


def synthetic_positives(
    classes: Sequence[str], n: int, preprocessing: PreprocessConfig, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray, list[dict]]]:
    """The first `n` synthetic ECGs with each of `classes`, drawn from `np.random.default_rng([seed, k])` for
    k = 0, 1, … (GENERATED_PER_DRAW at a time) and preprocessed as `preprocessing` says: per class, signals
    float32 [n, 12, T], lead masks bool [n, 12] and the generator's metadata per ECG (sample indices at the
    generator's rate). An ECG with several of the classes serves each."""
    config = SyntheticConfig(n=GENERATED_PER_DRAW, seed=seed, seconds=preprocessing.seconds)
    found: dict[str, list] = {code: [] for code in classes}
    draw = 0
    while any(len(rows) < n for rows in found.values()):
        generated, metadata = generate_batch(GENERATED_PER_DRAW, np.random.default_rng([seed, draw]), config)
        for i, meta in enumerate(metadata):
            wanted = [code for code in classes if code in meta["codes"] and len(found[code]) < n]
            if wanted:
                recording = Recording(f"synthetic-{seed}-{draw}-{i}", generated[i], config.fs, list(LEAD_NAMES))
                prepared = preprocess(recording, preprocessing)
                for code in wanted:
                    found[code].append((prepared.signal.astype(np.float32), prepared.lead_mask, meta))
        draw += 1
    return {
        code: (np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), [r[2] for r in rows])
        for code, rows in found.items()
    }


def delete_samples(signal: np.ndarray, deleted: np.ndarray) -> np.ndarray:
    """signal [12, T] with the samples where deleted [12, T] bool is True replaced, per lead, by linear
    interpolation between the nearest kept samples (held flat past the first and last); a lead with no kept
    sample becomes its mean."""
    result = signal.copy()
    positions = np.arange(signal.shape[1])
    for lead in np.flatnonzero(deleted.any(axis=1)):
        kept = ~deleted[lead]
        if kept.any():
            result[lead, ~kept] = np.interp(positions[~kept], positions[kept], signal[lead, kept])
        else:
            result[lead] = signal[lead].mean()
    return result


def deletion_scores(
    model: ECGTextModel,
    signal: np.ndarray,
    lead_mask: np.ndarray,
    class_vector: torch.Tensor,
    order: np.ndarray,
    fractions: Sequence[float] = DELETION_FRACTIONS,
) -> np.ndarray:
    """Scores [F] of signal [12, T] (lead_mask [12] bool) against class_vector [D] after deleting the first
    round(f · len(order)) samples of `order` (flat indices into [12, T], most important first) for each f."""
    variants = []
    for fraction in fractions:
        deleted = np.zeros(signal.size, dtype=bool)
        deleted[order[: round(fraction * len(order))]] = True
        variants.append(delete_samples(signal, deleted.reshape(signal.shape)))
    batch = torch.from_numpy(np.stack(variants))
    masks = torch.from_numpy(np.broadcast_to(lead_mask, (len(variants), len(lead_mask))).copy())
    with torch.no_grad():
        return (model.encode_ecg(batch, masks) @ class_vector).numpy()


def evidence_order(attribution: np.ndarray, lead_mask: np.ndarray) -> np.ndarray:
    """Flat indices of the samples of the real leads (lead_mask [12] bool) by attribution [12, T], largest first."""
    present = np.repeat(lead_mask, attribution.shape[1])
    candidates = np.flatnonzero(present)
    return candidates[np.argsort(-attribution.reshape(-1)[candidates], kind="stable")]


def random_order(shape: tuple[int, int], lead_mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat indices of the samples of the real leads of a [12, T] signal in a random order drawn from `rng`."""
    return rng.permutation(np.flatnonzero(np.repeat(lead_mask, shape[1])))


def shifted_order(order: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """`order` (flat indices into [12, T]) moved by one random circular time shift of 10-90 % of T drawn from
    `rng`: the same leads and the same clustering of deleted samples, at a place drawn at random."""
    lead, time = np.divmod(order, shape[1])
    shift = rng.integers(shape[1] // 10, shape[1] - shape[1] // 10)
    return lead * shape[1] + (time + shift) % shape[1]


def segment_overlaps(evidence: Evidence, location: np.ndarray, fs: float) -> bool:
    """Whether the top segment (its lead and [start, end)) touches location [12, T] bool."""
    if not evidence.top_segments:
        return False
    top = evidence.top_segments[0]
    return bool(location[top.lead, round(top.start_s * fs) : round(top.end_s * fs)].any())


def chance_overlap(location: np.ndarray, window: int) -> float:
    """Share of all segments of `window` samples (every lead, the grid `top_windows` uses) that touch location [12, T]."""
    starts = np.arange(0, location.shape[1], window)
    return float(np.logical_or.reduceat(location, starts, axis=1).mean())


def deletion_plot(figures: dict, path: Path) -> None:
    """Mean score against the fraction deleted in each of ORDERS, one panel per class."""
    classes = figures["classes"]
    columns = min(3, len(classes))
    rows = -(-len(classes) // columns)
    figure = Figure(figsize=(3.2 * columns, 2.6 * rows), dpi=DPI)
    fractions = 100 * np.array(figures["fractions"])
    for i, code in enumerate(classes):
        axes = figure.add_subplot(rows, columns, i + 1)
        result = figures["per_class"][code]
        for name, label, colour in (
            ("evidence", "top attributed first", "tab:blue"),
            ("random", "random samples", "grey"),
            ("shifted", "top set, shifted in time", "tab:orange"),
        ):
            axes.plot(fractions, result["curves"][name], marker="o", markersize=3, label=label, color=colour)
        axes.axvline(100 * figures["rate_fraction"], linestyle="--", color="lightgrey", linewidth=0.8)
        axes.set_title(
            f"{code}: {result['deletion_rate']:.0%} drop more, {result['overlap_rate']:.0%} overlap", fontsize=8
        )
        axes.set_xlabel("% of samples deleted", fontsize=7)
        axes.set_ylabel("class score (cosine)", fontsize=7)
        axes.tick_params(labelsize=7)
        if i == 0:
            axes.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path)


def faithfulness_lines(figures: dict) -> list[str]:
    """Markdown for report.md: the rates per class and overall against the goals, and the plot."""
    deletion_percent = round(100 * figures["rate_fraction"])
    lines = [
        "## Faithfulness of the evidence",
        "",
        f"{figures['n_per_class']} synthetic ECGs per class (seed {figures['seed']}), attributed against the class; "
        f"deletion by {figures['deletion']}. Deletion: share of ECGs whose score drops more when the top "
        f"{deletion_percent} % of samples by attribution are deleted than a random {deletion_percent} % (goal "
        f"≥ {DELETION_GOAL:.0%}); shifted: than the same samples moved by a random time shift (a stricter "
        f"control: same leads, same clustering). Overlap: share whose top segment touches the generator's "
        f"location of the abnormality (goal ≥ {OVERLAP_GOAL:.0%}); chance: what a random segment of that length "
        "touches (AF's location is the whole record).",
        "",
        "| class | ECGs | deletion | deletion vs shifted | overlap | chance overlap | score drop: top / random / shifted |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [(code, figures["per_class"][code]) for code in figures["classes"]]
    rows += [("all", figures["overall"]), ("all but AF", figures["overall_without_af"])]
    for name, result in rows:
        if result is None:
            continue
        drop = result["mean_drop"]
        lines.append(
            f"| {name} | {result['n']} | {result['deletion_rate']:.0%} | {result['deletion_rate_shifted']:.0%} | "
            f"{result['overlap_rate']:.0%} | {result['chance_overlap']:.0%} | "
            f"{drop['evidence']:.3f} / {drop['random']:.3f} / {drop['shifted']:.3f} |"
        )
    lines += ["", f"![deletion curves]({figures['plot']})", ""]
    return lines


def _class_figures(
    model: ECGTextModel,
    signals: np.ndarray,
    lead_masks: np.ndarray,
    metadata: list[dict],
    code: str,
    class_vector: torch.Tensor,
    fs: float,
    seed: int,
    steps: int,
    batch_size: int,
) -> dict:
    """One class's per-ECG results: deletion curves [n, F] per order (ORDERS), overlaps [n] bool, chances [n]."""
    rng = np.random.default_rng(seed)
    curves: dict[str, list] = {name: [] for name in ORDERS}
    overlaps, chances = [], []
    for start in range(0, len(signals), batch_size):
        batch = slice(start, start + batch_size)
        evidence = explain_score(
            model,
            torch.from_numpy(signals[batch]),
            torch.from_numpy(lead_masks[batch]),
            class_vector[None],
            steps=steps,
            seconds_per_sample=1 / fs,
            segment_s=SEGMENT_S,
            top_segments=1,
        )
        for i, found in enumerate(evidence, start):
            signal, lead_mask = signals[i], lead_masks[i]
            top = evidence_order(found.attribution, lead_mask)
            orders = {
                "evidence": top,
                "random": random_order(signal.shape, lead_mask, rng),
                "shifted": shifted_order(top, signal.shape, rng),
            }
            for name, order in orders.items():
                curves[name].append(deletion_scores(model, signal, lead_mask, class_vector, order))
            location = abnormality_mask(metadata[i], code, fs, signal.shape[1])
            overlaps.append(segment_overlaps(found, location, fs))
            chances.append(chance_overlap(location, max(1, round(SEGMENT_S * fs))))
    return {
        "curves": {name: np.stack(rows) for name, rows in curves.items()},
        "overlaps": np.array(overlaps),
        "chances": np.array(chances),
    }


def _rates(per_ecg: Sequence[dict]) -> dict:
    """Rates, mean drops at RATE_FRACTION and mean curves over the ECGs of one or more `_class_figures` results."""
    curves = {name: np.concatenate([part["curves"][name] for part in per_ecg]) for name in ORDERS}  # [n, F]
    rate_index = DELETION_FRACTIONS.index(RATE_FRACTION)
    drops = {name: curve[:, 0] - curve[:, rate_index] for name, curve in curves.items()}
    return {
        "n": len(drops["evidence"]),
        "deletion_rate": float(np.mean(drops["evidence"] > drops["random"])),
        "deletion_rate_shifted": float(np.mean(drops["evidence"] > drops["shifted"])),
        "overlap_rate": float(np.mean(np.concatenate([part["overlaps"] for part in per_ecg]))),
        "chance_overlap": float(np.mean(np.concatenate([part["chances"] for part in per_ecg]))),
        "mean_drop": {name: float(drop.mean()) for name, drop in drops.items()},
        "curves": {name: curve.mean(axis=0).tolist() for name, curve in curves.items()},
    }
