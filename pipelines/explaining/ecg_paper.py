"""A 12-lead ECG on paper with the evidence for one score drawn over it: the standard 3 × 4 layout (I/II/III,
aVR/aVL/aVF, V1-V3, V4-V6, each column its own quarter of the record, 2.5 s of a 10 s window) above a lead-II
rhythm strip of the whole record and, where the evidence carries it, the global pooler's attention.

    figure = plot_evidence(signal, 500, evidence, "AFIB: atrial fibrillation", unit="mV")   # score in the title
    figure.savefig("afib.png")

Paper: 25 mm/s, minor lines every 0.04 s and 0.1 amplitude unit, major every 0.2 s and 0.5 unit, pink. The unit
is the caller's to name: shards and served requests hold the preprocessed signal (per-record min-max by default,
see README "normalize"), so evaluation and serving draw "input units" at a gain that fills the rows; a caller
holding millivolts says `unit="mV"` and gets the clinical 10 mm/mV. The evidence: integrated gradients' positive
attribution as an orange band behind each lead's trace (one colour scale for all leads), the top segments boxed
on their lead and numbered by rank.

Drawn with matplotlib on a `Figure` (no pyplot state), not with `ecg_plot`: its 0.3.0 (October 2026) has the
12-lead + rhythm layout and per-lead span annotations, but writes "amplitude: mV" and a 1 mV calibration pulse on
every chart (wrong for normalised input), has no continuous band or extra strip (both would be drawn on its
private millimetre geometry), draws each grid line as its own artist (a 12-lead PNG in 4.5 s against 0.34 s here,
same 2-core machine, warm) and is not in the pinned environment.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from models.evidence import Evidence
from pipelines.data.leads import STANDARD_LEADS

MM_PER_S = 25.0
MM_PER_INCH = 25.4
ROW_MM = 30.0
"""Height of each row of the 3 × 4 layout and of the rhythm strip."""
ATTENTION_MM = 8.0
MARGIN_MM = (14.0, 6.0, 16.0, 14.0)
"""Left, right, top (title), bottom (scale line)."""
GAP_MM = 2.0
CLINICAL_MM_PER_MV = 10.0
LAYOUT = (("I", "II", "III"), ("aVR", "aVL", "aVF"), ("V1", "V2", "V3"), ("V4", "V5", "V6"))
"""The columns of the 3 × 4 layout, top to bottom."""
RHYTHM_LEAD = "II"
GRID_MINOR, GRID_MAJOR = (0.04, 0.1), (0.2, 0.5)
"""(seconds, amplitude units) between grid lines."""
GRID_COLOURS = {"minor": ("#f6cfd6", 0.4), "major": ("#e58a9a", 0.8)}
"""Colour and line width (points) of each grid."""
BAND_RGB, BAND_ALPHA = (1.0, 0.45, 0.0), 0.6
BOX_COLOUR = "#1f3fbf"
DPI = 100


def plot_evidence(
    signal: np.ndarray,
    fs: float,
    evidence: Evidence,
    title: str,
    *,
    unit: str = "input units",
    mm_per_unit: float | None = None,
    lead_mask: np.ndarray | None = None,
) -> Figure:
    """signal [12, T] (standard lead order, as the model read it), sampled at `fs` Hz, with `evidence` for it
    (attribution [12, T], top segments in seconds, optional pooler attention [N]) → the figure, titled
    "`title` — score S". `unit` names the amplitude; `mm_per_unit` is the gain (default: 10 mm/mV for "mV",
    otherwise the largest that keeps every lead within its row); `lead_mask` [12] bool marks absent leads."""
    signal = np.asarray(signal, dtype=np.float32)
    if signal.ndim != 2 or signal.shape[0] != len(STANDARD_LEADS):
        raise ValueError(f"signal must be [12, T], got {list(signal.shape)}")
    if evidence.attribution.shape != signal.shape:
        raise ValueError(f"evidence.attribution is {list(evidence.attribution.shape)}, the signal {list(signal.shape)}")
    if not fs > 0:
        raise ValueError(f"fs must be positive, got {fs}")
    duration = signal.shape[1] / fs
    column_s = duration / len(LAYOUT)
    centred = signal - np.median(signal, axis=1, keepdims=True)
    gain = mm_per_unit or _gain(centred, unit)
    attention = evidence.pooler_attention

    width_mm = MARGIN_MM[0] + MARGIN_MM[1] + duration * MM_PER_S
    rows_mm = (len(LAYOUT[0]) + 1) * ROW_MM + (ATTENTION_MM + GAP_MM if attention is not None else 0.0)
    height_mm = MARGIN_MM[2] + MARGIN_MM[3] + rows_mm
    pixels = [round(mm / MM_PER_INCH * DPI) for mm in (width_mm, height_mm)]  # whole pixels: the PNG's size
    figure = Figure(figsize=(pixels[0] / DPI, pixels[1] / DPI), dpi=DPI)

    def axes_at(left_mm: float, top_mm: float, width: float, height: float, label: str) -> Axes:
        box = (left_mm / width_mm, 1 - (top_mm + height) / height_mm, width / width_mm, height / height_mm)
        axes = figure.add_axes(box, label=label)
        axes.set_axis_off()
        return axes

    band = _band(evidence.attribution, max(1, int(round(GRID_MINOR[0] * fs))))
    half_range = ROW_MM / 2 / gain
    for column, leads in enumerate(LAYOUT):
        window = (column * column_s, (column + 1) * column_s)
        for row, name in enumerate(leads):
            left = MARGIN_MM[0] + window[0] * MM_PER_S
            axes = axes_at(left, MARGIN_MM[2] + row * ROW_MM, column_s * MM_PER_S, ROW_MM, f"trace {name}")
            _trace(axes, centred, band, evidence, name, window, fs, half_range, lead_mask)
    rhythm_top = MARGIN_MM[2] + len(LAYOUT[0]) * ROW_MM
    rhythm = axes_at(MARGIN_MM[0], rhythm_top, duration * MM_PER_S, ROW_MM, f"trace {RHYTHM_LEAD} rhythm")
    _trace(rhythm, centred, band, evidence, RHYTHM_LEAD, (0.0, duration), fs, half_range, lead_mask)
    _hidden_segments(rhythm, evidence, column_s, half_range)
    if attention is not None:
        strip = axes_at(MARGIN_MM[0], rhythm_top + ROW_MM + GAP_MM, duration * MM_PER_S, ATTENTION_MM, "attention")
        _attention(strip, np.asarray(attention, dtype=np.float32), evidence.patch_s, duration)

    figure.suptitle(f"{title} — score {evidence.score:.3f}", x=MARGIN_MM[0] / width_mm, ha="left", fontsize=11)
    scale = (
        f"{MM_PER_S:g} mm/s, {gain:g} mm/{unit}; grid {GRID_MINOR[0]:g} s × {GRID_MINOR[1]:g} {unit} (minor), "
        f"{GRID_MAJOR[0]:g} s × {GRID_MAJOR[1]:g} {unit} (major).\nOrange: positive attribution (integrated "
        "gradients); boxes: top segments by rank (dashed on the rhythm strip: outside their lead's column)"
        + ("; bottom strip: the global pooler's attention over time." if attention is not None else ".")
    )
    figure.text(MARGIN_MM[0] / width_mm, 2 / height_mm, scale, fontsize=7, ha="left", va="bottom")
    return figure


def _gain(centred: np.ndarray, unit: str) -> float:
    """mm per amplitude unit: clinical 10 mm/mV, else the largest 1-2-5 step keeping every lead in its row."""
    if unit == "mV":
        return CLINICAL_MM_PER_MV
    excursion = max(float(np.abs(centred).max()), 1e-6)  # the farthest any lead strays from its baseline
    fitting = 0.9 * (ROW_MM / 2) / excursion
    steps = np.array([1.0, 2.0, 5.0]) * 10.0 ** np.floor(np.log10(fitting))
    return float(steps[steps <= fitting].max())


def _trace(
    axes: Axes,
    centred: np.ndarray,
    band: np.ndarray,
    evidence: Evidence,
    name: str,
    window: tuple[float, float],
    fs: float,
    half_range: float,
    lead_mask: np.ndarray | None,
) -> None:
    """One lead over `window` (seconds): paper grid, attribution band (`band` [12, T] in [0, 1]), trace,
    segment boxes, lead name."""
    lead = STANDARD_LEADS.index(name)
    first, last = int(round(window[0] * fs)), int(round(window[1] * fs))
    times = np.arange(first, last) / fs
    axes.set_xlim(*window)
    axes.set_ylim(-half_range, half_range)
    _paper_grid(axes, window, half_range)
    rgba = np.zeros((1, last - first, 4), dtype=np.float32)
    rgba[..., :3] = BAND_RGB
    rgba[0, :, 3] = BAND_ALPHA * band[lead, first:last]
    axes.imshow(rgba, extent=(*window, -half_range, half_range), aspect="auto", interpolation="nearest", zorder=1)
    axes.plot(times, centred[lead, first:last], color="black", linewidth=0.7, zorder=2)
    for rank, segment in enumerate(evidence.top_segments, start=1):
        start, end = max(segment.start_s, window[0]), min(segment.end_s, window[1])
        if segment.lead != lead or end <= start:
            continue
        _box(axes, start, end, -half_range * 0.95, 1.9 * half_range, f"segment {rank}", f" {rank}", "solid")
    absent = lead_mask is not None and not lead_mask[lead]
    axes.text(window[0], half_range * 0.9, f" {name}{' (absent)' if absent else ''}", fontsize=8, va="top", zorder=4)


def _hidden_segments(rhythm: Axes, evidence: Evidence, column_s: float, half_range: float) -> None:
    """Top segments of leads other than the rhythm strip's that fall (partly) outside their lead's column of the
    3 × 4 layout: marked, dashed and named, one lane each from the top of the rhythm strip, which spans the whole
    record."""
    lane_height = 0.95 * half_range / max(1, len(evidence.top_segments))
    lane = 0
    for rank, segment in enumerate(evidence.top_segments, start=1):
        name = STANDARD_LEADS[segment.lead]
        if name == RHYTHM_LEAD:
            continue
        column = next(c for c, leads in enumerate(LAYOUT) if name in leads)
        if column * column_s <= segment.start_s and segment.end_s <= (column + 1) * column_s:
            continue
        lane += 1
        bottom, label = half_range * 0.95 - lane * lane_height, f"segment {rank} {name}"
        _box(rhythm, segment.start_s, segment.end_s, bottom, lane_height, label, f" {rank} {name}", "dashed")


def _box(axes: Axes, start: float, end: float, bottom: float, height: float, label: str, text: str, style: str):
    """An unfilled rectangle over [start, end) s labelled `label` (what tests find), `text` written at its top."""
    box = Rectangle(
        (start, bottom), end - start, height, fill=False, edgecolor=BOX_COLOUR, linewidth=1.2, linestyle=style
    )
    box.set(zorder=3, label=label)
    axes.add_patch(box)
    axes.text(start, bottom + height, text, color=BOX_COLOUR, fontsize=6, va="top", zorder=4)


def _paper_grid(axes: Axes, window: tuple[float, float], half_range: float) -> None:
    """Minor then major grid lines over the panel, as two line collections labelled "grid minor" / "grid major"."""
    for kind, (step_s, step_unit) in (("minor", GRID_MINOR), ("major", GRID_MAJOR)):
        xs = np.arange(np.ceil(window[0] / step_s - 1e-6), np.floor(window[1] / step_s + 1e-6) + 1) * step_s
        ys = np.arange(-np.floor(half_range / step_unit), np.floor(half_range / step_unit) + 1) * step_unit
        lines = [((x, -half_range), (x, half_range)) for x in xs] + [((window[0], y), (window[1], y)) for y in ys]
        colour, width = GRID_COLOURS[kind]
        axes.add_collection(LineCollection(lines, colors=colour, linewidths=width, zorder=0, label=f"grid {kind}"))


def _attention(axes: Axes, attention: np.ndarray, patch_s: float, duration: float) -> None:
    """attention [N] over patches of `patch_s` seconds, as steps filled from zero."""
    edges = np.arange(len(attention) + 1) * patch_s
    axes.stairs(attention, edges, fill=True, color="#5a5a9a")
    axes.set_xlim(0.0, duration)
    axes.set_ylim(0.0, max(float(attention.max()), 1e-12))
    label_box = {"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1}
    axes.text(0.0, 1.0, " pooler attention", transform=axes.transAxes, fontsize=7, va="top", bbox=label_box)


def _band(attribution: np.ndarray, width: int) -> np.ndarray:
    """attribution [12, T] → [12, T] in [0, 1]: the positive part, averaged over `width` samples (one minor grid
    box: single samples are noise at print resolution), over its maximum across all leads."""
    positive = np.clip(attribution, 0.0, None)
    padded = np.pad(positive, ((0, 0), (width // 2, width - 1 - width // 2)), mode="edge")
    smooth = np.lib.stride_tricks.sliding_window_view(padded, width, axis=1).mean(axis=2)
    return smooth / max(float(smooth.max()), 1e-12)
