"""The evidence picture: the 3 × 4 + rhythm-strip layout with its columns' time windows, the paper grid, the top
segments boxed at their times on their lead (dashed on the rhythm strip where their lead's column does not show
them), the pooler-attention strip, the label and score in the title, the amplitude unit named, a PNG written."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread
from matplotlib.patches import Rectangle

from models.evidence import Evidence, rank_leads, top_windows
from pipelines.data.leads import STANDARD_LEADS
from pipelines.data.preprocess import PreprocessConfig, preprocess
from pipelines.data.wfdb_io import Recording
from pipelines.explaining.ecg_paper import plot_evidence
from pipelines.synthetic import SyntheticConfig, generate_batch

FS = 500
COLUMNS = {"I": 0, "II": 0, "III": 0, "aVR": 1, "aVL": 1, "aVF": 1, "V1": 2, "V2": 2, "V3": 2, "V4": 3, "V5": 3}
COLUMNS["V6"] = 3


@pytest.fixture(scope="module")
def signal() -> np.ndarray:
    """One synthetic ECG as the model reads it (min-max normalised): float32 [12, 5000]."""
    signals, _ = generate_batch(1, np.random.default_rng(2), SyntheticConfig(n=1))
    prepared = preprocess(Recording("e", signals[0], FS, list(STANDARD_LEADS)), PreprocessConfig())
    return prepared.signal.astype(np.float32)


def evidence_for(signal: np.ndarray, attention: np.ndarray | None = None) -> Evidence:
    """Attribution on V2 at 5.5-6.0 s (inside V2's column), V1 at 1.0-1.5 s (outside it) and II at 8.0-8.5 s."""
    attribution = np.random.default_rng(0).normal(0.0, 1e-3, signal.shape).astype(np.float32)
    for lead, start_s, weight in (("V2", 5.5, 3.0), ("V1", 1.0, 2.0), ("II", 8.0, 1.0)):
        start = int(start_s * FS)
        attribution[STANDARD_LEADS.index(lead), start : start + FS // 2] += weight / FS
    segments = top_windows(attribution, FS // 2, 1 / FS, 3)
    ranking = rank_leads(attribution, np.ones(12, dtype=bool))
    return Evidence(0, 0, 0.3712, attribution, ranking, segments, 0.0, pooler_attention=attention, patch_s=0.128)


def traces(figure) -> dict[str, object]:
    """Lead name (or "II rhythm") → its trace axes."""
    return {axes.get_label()[len("trace ") :]: axes for axes in figure.axes if axes.get_label().startswith("trace ")}


def boxes(axes) -> dict[str, Rectangle]:
    return {patch.get_label(): patch for patch in axes.patches if isinstance(patch, Rectangle)}


def test_twelve_leads_in_their_columns_and_a_ten_second_rhythm_strip_on_pink_paper(signal):
    figure = plot_evidence(signal, FS, evidence_for(signal), "AFIB: atrial fibrillation")
    axes = traces(figure)
    assert set(axes) == {*STANDARD_LEADS, "II rhythm"} and len(axes) == 13
    for name, column in COLUMNS.items():
        assert axes[name].get_xlim() == pytest.approx((2.5 * column, 2.5 * (column + 1)))
        assert len(axes[name].lines[0].get_xdata()) == 2.5 * FS  # the column's own samples, not a squeezed 10 s
    assert axes["II rhythm"].get_xlim() == pytest.approx((0.0, 10.0))
    grids = {collection.get_label(): collection for collection in axes["II rhythm"].collections}
    for kind, step_s, step_unit in (("minor", 0.04, 0.1), ("major", 0.2, 0.5)):
        segments = grids[f"grid {kind}"].get_segments()
        xs = sorted(s[0, 0] for s in segments if s[0, 0] == s[1, 0])
        ys = sorted(s[0, 1] for s in segments if s[0, 1] == s[1, 1])
        assert np.diff(xs) == pytest.approx(step_s) and len(xs) == round(10 / step_s) + 1
        assert np.diff(ys) == pytest.approx(step_unit)
        red, green, blue, _ = grids[f"grid {kind}"].get_colors()[0]
        assert red > 0.85 and red > green and red > blue  # pink
    assert [axes for axes in figure.axes if axes.get_label() == "attention"] == []


def test_top_segments_are_boxed_at_their_times_on_their_lead(signal):
    evidence = evidence_for(signal)
    placed = [(STANDARD_LEADS[s.lead], s.start_s) for s in evidence.top_segments]
    assert placed == [("V2", 5.5), ("V1", 1.0), ("II", 8.0)]
    axes = traces(plot_evidence(signal, FS, evidence, "AFIB"))
    v2 = boxes(axes["V2"])["segment 1"]
    assert (v2.get_x(), v2.get_width(), v2.get_linestyle()) == (pytest.approx(5.5), pytest.approx(0.5), "solid")
    rhythm = boxes(axes["II rhythm"])
    assert set(rhythm) == {"segment 2 V1", "segment 3"}
    assert (rhythm["segment 2 V1"].get_x(), rhythm["segment 2 V1"].get_linestyle()) == (pytest.approx(1.0), "dashed")
    assert (rhythm["segment 3"].get_x(), rhythm["segment 3"].get_width()) == (pytest.approx(8.0), pytest.approx(0.5))
    # V1's column shows 5.0-7.5 s and lead II's 0-2.5 s: their segments are on the rhythm strip alone
    assert all(boxes(axes[name]) == {} for name in STANDARD_LEADS if name != "V2")


def test_title_holds_label_and_score_and_the_amplitude_unit_is_named(signal, tmp_path):
    attention = np.full(78, 1 / 78, dtype=np.float32)
    figure = plot_evidence(signal, FS, evidence_for(signal, attention), "AFIB: atrial fibrillation (ecg-7)")
    assert figure._suptitle.get_text() == "AFIB: atrial fibrillation (ecg-7) — score 0.371"
    texts = " ".join(text.get_text() for text in figure.texts)
    assert "mm/input units" in texts and "0.1 input units" in texts and "mV" not in texts
    (strip,) = [axes for axes in figure.axes if axes.get_label() == "attention"]
    assert strip.get_xlim() == pytest.approx((0.0, 10.0))
    figure.savefig(tmp_path / "evidence.png")
    image = imread(tmp_path / "evidence.png")
    assert image.shape[:2] == (630, 1063)  # 270 × 160 mm at 100 dpi

    in_mv = plot_evidence(signal, FS, evidence_for(signal), "AFIB", unit="mV")
    assert "25 mm/s, 10 mm/mV" in " ".join(text.get_text() for text in in_mv.texts)


def test_absent_leads_are_named_and_bad_shapes_refused(signal):
    mask = np.ones(12, dtype=bool)
    mask[STANDARD_LEADS.index("V3")] = False
    axes = traces(plot_evidence(signal, FS, evidence_for(signal), "AFIB", lead_mask=mask))
    assert any(text.get_text().strip() == "V3 (absent)" for text in axes["V3"].texts)
    with pytest.raises(ValueError, match=r"signal must be \[12, T\]"):
        plot_evidence(signal[:6], FS, evidence_for(signal), "AFIB")
    with pytest.raises(ValueError, match="evidence.attribution"):
        plot_evidence(signal[:, :2500], FS, evidence_for(signal), "AFIB")
