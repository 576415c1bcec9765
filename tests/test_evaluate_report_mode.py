"""`pipelines.evaluate --mode report retrieval` end to end on a tiny MELP model trained a few steps here (CPU,
no Ray): metrics.json, report.md and the console, both modes beside zero-shot or alone; the scoring of
report texts on references; an export without a caption decoder refused with a usage error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from models.factory import create_model
from pipelines.data.leads import STANDARD_LEADS
from pipelines.data.preprocess import PreprocessConfig, preprocess
from pipelines.data.schema import lead_mask_array, shard_schema, signal_array
from pipelines.data.shard_files import shard_name
from pipelines.data.trained_with import TrainedWith
from pipelines.data.wfdb_io import Recording
from pipelines.evaluate import main as evaluate_main
from pipelines.evaluation.report_drafts import MOST_FREQUENT, NEAREST, score_texts
from pipelines.labels.mentions import LabelMentions
from pipelines.labels.tasks import load_task
from pipelines.synthetic import SyntheticConfig, generate_batch
from tests.shard_folders import write_manifest

SPLITS = {"train": 40, "test": 16}
TRAIN_STEPS = 4


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """56 synthetic ECGs written as prepare writes shards (40 train, 16 test); test row 3 has no report."""
    folder = tmp_path_factory.mktemp("report-mode-shards")
    n = sum(SPLITS.values())
    signals, metadata = generate_batch(n, np.random.default_rng(3), SyntheticConfig(n=n))
    config = PreprocessConfig()
    prepared = [preprocess(Recording(f"r{i}", signals[i], 500, list(STANDARD_LEADS)), config) for i in range(n)]
    splits = [split for split, count in SPLITS.items() for _ in range(count)]
    reports = [m["report"] for m in metadata]
    reports[SPLITS["train"] + 3] = ""
    table = pa.table(
        {
            "ecg_id": [f"synthetic/{i:03d}" for i in range(n)],
            "patient_id": [f"p{i}" for i in range(n)],
            "signal": signal_array(np.stack([p.signal for p in prepared])),
            "lead_mask": lead_mask_array(np.stack([p.lead_mask for p in prepared])),
            "fs": pa.array([config.fs] * n, pa.int32()),
            "report": reports,
            "labels": [m["codes"] for m in metadata],
            "split": splits,
            "source": ["synthetic"] * n,
            "flags": [[] for _ in range(n)],
        },
        schema=shard_schema(prepared[0].signal.shape[-1], config.fs),
    )
    for split in SPLITS:
        rows = table.filter(pc.equal(table["split"], split))
        pq.write_table(rows, folder / shard_name(split, 0, 0))
    return write_manifest(folder, preprocessing=TrainedWith(config).to_dict()["preprocessing"])


def _export(objective: str, shards: Path, directory: Path, steps: int) -> Path:
    """A tiny model of `objective`, trained `steps` AdamW steps on the train split, saved as an export."""
    torch.manual_seed(0)
    model, _ = create_model("tiny", objective=objective)
    train = pq.read_table(next(shards.glob("part-train-*.parquet")))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for step in range(steps):
        rows = train.slice(8 * step % train.num_rows, 8)
        signal = rows["signal"].combine_chunks().to_numpy_ndarray().astype(np.float32)
        lead_mask = np.stack(rows["lead_mask"].to_numpy(zero_copy_only=False))
        model(model.collate(signal, lead_mask, rows["report"].to_pylist()))["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    model.trained_with = TrainedWith.of_shards([str(shards)]).to_dict()
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def melp_export(shards, tmp_path_factory) -> Path:
    return _export("melp", shards, tmp_path_factory.mktemp("melp-export"), TRAIN_STEPS)


@pytest.mark.slow
def test_report_retrieval_and_zero_shot_together(melp_export, shards, tmp_path, capsys, restore_logging):
    output = tmp_path / "eval"
    argv = [
        "--model", str(melp_export), "--data", str(shards), "--task", "synthetic",
        "--mode", "report", "retrieval", "zero-shot", "--output", str(output), "--max-tokens", "12",
    ]  # fmt: skip
    assert evaluate_main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((output / "metrics.json").read_text())
    assert results["headline"] == "zero_shot" and "macro_auroc" in results

    report = results["report"]
    assert (report["rows"], report["without_report"]) == (15, 1)
    assert report["options"]["max_tokens"] == 12 and report["options"]["num_beams"] == 1
    for figures in (report, report["baselines"][NEAREST], report["baselines"][MOST_FREQUENT]):
        for key in ("bleu4", "rougeL", "ce_micro_f1", "ce_macro_f1"):
            assert 0.0 <= figures[key] <= 1.0, key
        assert set(figures["per_class"]) == set(report["codes"])
    mentions = LabelMentions(load_task("synthetic"))
    assert len(report["examples"]) == 5
    for example in report["examples"]:
        assert example["reference"] and sorted(mentions.codes_in(example["draft"])) == example["mentioned"]
        assert example[NEAREST] in _reports(shards, "train")
    assert report["baselines"][MOST_FREQUENT]["text"] in _reports(shards, "train")

    retrieval = results["retrieval"]
    assert (retrieval["rows"], retrieval["without_report"]) == (15, 1)
    assert retrieval["distinct_reports"] == len(set(_reports(shards, "test")) - {""})
    assert set(retrieval["baselines"]) == {"random-weights"}
    for figures in (retrieval, retrieval["baselines"]["random-weights"], retrieval["chance"]):
        for direction in ("ecg_to_report", "report_to_ecg"):
            recalls = [figures[direction][f"R@{k}"] for k in (1, 5, 10)]
            assert 0.0 <= recalls[0] <= recalls[1] <= recalls[2] <= 1.0

    markdown = (output / "report.md").read_text()
    for section in ("## Macro AUROC", "## Report drafting", "### Example drafts", "## Retrieval", NEAREST):
        assert section in markdown
    assert f"report drafts: CE macro F1 {report['ce_macro_f1']:.3f}" in printed
    assert f"retrieval over 15 ECGs, {retrieval['distinct_reports']} distinct reports" in printed


@pytest.mark.slow
def test_report_mode_alone_heads_with_the_drafts(melp_export, shards, tmp_path, capsys, restore_logging):
    output = tmp_path / "eval"
    argv = ["--model", str(melp_export), "--data", str(shards), "--mode", "report", "--output", str(output)]
    argv += ["--num-beams", "2", "--max-tokens", "6", "--no-baselines"]
    assert evaluate_main(argv) == 0
    results = json.loads((output / "metrics.json").read_text())
    assert results["headline"] == "report" and "macro_auroc" not in results
    assert results["report"]["options"]["num_beams"] == 2
    assert "## Macro AUROC" not in (output / "report.md").read_text()
    assert "report drafts: CE macro F1" in capsys.readouterr().out


@pytest.mark.slow
def test_retrieval_mode_alone_heads_with_recall(melp_export, shards, tmp_path, capsys, restore_logging):
    output = tmp_path / "eval"
    argv = ["--model", str(melp_export), "--data", str(shards), "--mode", "retrieval", "--output", str(output)]
    assert evaluate_main(argv) == 0
    assert json.loads((output / "metrics.json").read_text())["headline"] == "retrieval"
    assert "    random-weights: R@1/5/10 ECG→report" in capsys.readouterr().out


def test_an_export_without_a_caption_decoder_is_a_usage_error(shards, tmp_path, capsys, restore_logging):
    export = _export("cmelt", shards, tmp_path / "cmelt-export", steps=0)
    argv = ["--model", str(export), "--data", str(shards), "--mode", "report", "--output", str(tmp_path / "eval")]
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "'cmelt'" in error and "MELP export" in error


@pytest.mark.parametrize(("flag", "value"), [("--num-beams", "0"), ("--max-tokens", "-1")])
def test_bad_search_flags_are_usage_errors(flag, value, tmp_path, capsys):
    argv = ["--model", str(tmp_path), "--data", str(tmp_path), "--mode", "report", "--output", str(tmp_path)]
    argv += [flag, value]
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(argv)
    assert exit_info.value.code == 2 and flag.removeprefix("--").replace("-", "_") in capsys.readouterr().err


def test_references_scored_against_themselves_are_perfect():
    """The synthetic reports state every label, so the references themselves reach CE F1 1 (the matcher's
    ceiling), with BLEU-4 and ROUGE-L 1, also as word pieces decode them; a constant text does not."""
    task = load_task("synthetic")
    _, metadata = generate_batch(64, np.random.default_rng(5), SyntheticConfig(n=64))
    references = [m["report"] for m in metadata]
    targets = task.targets([m["codes"] for m in metadata])
    present = targets.any(axis=0)
    codes = [code for code, kept in zip(task.codes, present) if kept]
    targets, mentions = targets[:, present], LabelMentions(task)
    perfect = score_texts(references, references, targets, mentions, codes)
    assert perfect["bleu4"] == pytest.approx(1.0) and perfect["rougeL"] == pytest.approx(1.0)
    assert perfect["ce_micro_f1"] == 1.0 and perfect["ce_macro_f1"] == 1.0
    decoded = [r.replace("-", " - ") for r in references]  # as word pieces decode: "inverted t - waves."
    assert decoded != references
    assert score_texts(decoded, references, targets, mentions, codes) == perfect
    constant = score_texts(["sinus rhythm. normal ecg."] * 64, references, targets, mentions, codes)
    assert constant["per_class"]["SR"]["recall"] == 1.0 and constant["ce_macro_f1"] < 0.5


def _reports(shards: Path, split: str) -> list[str]:
    return pq.read_table(next(shards.glob(f"part-{split}-*.parquet")))["report"].to_pylist()
