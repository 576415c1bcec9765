"""Concepts benchmark: zero-shot AUROC by concept on real PTB-XL records, and across label systems.

    python -m tests.benchmarks.bench_concepts --shards data/ptbxl500 --ptbxl ../shared/data/ptbxl-500 \\
        --export synthetic-only=runs/main10/export --export ptbxl+synthetic=runs/ptbxl-syn10/export

1. Every export is evaluated as a user evaluates it (`evaluate_export(..., "concepts", ["zero-shot"])`) on
   each `--splits` split of the PTB-XL shards (folds 9 and 10: val and test), with the random-weights
   baseline beside it: AUROC per concept and macro.
2. The same PTB-XL records of folds 9 and 10 are written again as a CinC-style archive (`wfdb.wrsamp`, the
   header's `#Dx:` holding each record's SNOMED CT codes, reached from its SCP codes through the concept
   table, as the CinC 2021 challenge relabelled PTB-XL), prepared with `--source wfdb --report labels` and
   scored zero-shot with `--task concepts` by every export, over all its rows, beside the SCP-labelled
   shards of the same records: the AUROC per concept should not depend on the label system.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd
import wfdb

from models.model import ECGTextModel
from pipelines.evaluation.predict import predict_split
from pipelines.evaluation.suite import evaluate_export
from pipelines.labels.concepts import concepts, concepts_of
from pipelines.labels.metrics import macro_auroc
from pipelines.labels.tasks import load_task
from pipelines.labels.zero_shot import zero_shot_auroc
from pipelines.prepare import main as prepare_main

HELD_OUT_FOLDS = (9, 10)
"""PTB-XL's val and test folds: never trained on."""


def snomed_codes(scp_codes: list[str]) -> list[str]:
    """Each SCP code's concepts' SNOMED CT codes (the first of each), in order, without repeats; SCP codes the
    concept table does not map (e.g. ABQRS) are left out, as the challenge's relabelling left out its unscored ones."""
    mapped = scp_codes_of_table()
    found = [
        c.codes["snomed"][0]
        for code in scp_codes
        if code in mapped
        for c in concepts_of("scp", code)
        if c.codes["snomed"]
    ]
    return list(dict.fromkeys(found))


def scp_codes_of_table() -> set[str]:
    return {code for concept in concepts().values() for code in concept.codes["scp"]}


def write_snomed_archive(ptbxl: Path, output: Path) -> int:
    """The held-out folds' 500 Hz records as a CinC-style WFDB folder with SNOMED `#Dx:` headers; returns how
    many records were written (records whose SCP codes reach no SNOMED code keep an empty `#Dx:`)."""
    database = pd.read_csv(ptbxl / "ptbxl_database.csv")
    held_out = database[database["strat_fold"].isin(HELD_OUT_FOLDS)]
    output.mkdir(parents=True, exist_ok=True)
    for row in held_out.itertuples():
        record = wfdb.rdrecord(str(ptbxl / row.filename_hr))
        dx = snomed_codes(list(ast.literal_eval(row.scp_codes)))
        sex = "Female" if row.sex == 1 else "Male"
        wfdb.wrsamp(
            f"HR{row.ecg_id:05d}",
            fs=record.fs,
            units=record.units,
            sig_name=record.sig_name,
            p_signal=record.p_signal,
            fmt=["16"] * record.n_sig,
            adc_gain=[1000.0] * record.n_sig,
            baseline=[0] * record.n_sig,
            comments=[f"Age: {row.age:.0f}", f"Sex: {sex}", f"Dx: {','.join(dx)}"],
            write_dir=str(output),
        )
    return len(held_out)


def all_rows_auroc(export: str, shards: Path, splits: list[str]) -> tuple[dict[str, float], int]:
    """Zero-shot AUROC per concept over the rows of `splits` of `shards` together, and how many rows."""
    model = ECGTextModel.from_pretrained(export).eval()
    task = load_task("concepts")
    embeddings, labels = [], []
    for split in splits:
        try:
            x, split_labels = predict_split(model.encode_ecg, str(shards), split)
        except ValueError:  # a split the hash left empty
            continue
        embeddings.append(x)
        labels.extend(split_labels)
    return zero_shot_auroc(model, np.concatenate(embeddings), labels, task.codes, task), len(labels)


def print_table(title: str, columns: dict[str, dict[str, float]], positives: dict[str, int] | None = None) -> None:
    concepts = sorted(set().union(*columns.values()))
    print(f"\n{title}\n")
    header = ["concept", *(["positives"] if positives else []), *columns]
    print("| " + " | ".join(header) + " |")
    print("| --- |" + " ---: |" * (len(header) - 1))
    for concept in concepts:
        cells = [f"{columns[name].get(concept, float('nan')):.3f}" for name in columns]
        print("| " + " | ".join([concept, *([str(positives.get(concept, 0))] if positives else []), *cells]) + " |")
    print(
        "| **macro** |"
        + (" |" if positives else "")
        + "".join(f" **{macro_auroc(values):.3f}** ({len(values)}) |" for values in columns.values())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, required=True, help="PTB-XL-500 shards (prepare --source ptbxl)")
    parser.add_argument("--ptbxl", type=Path, required=True, help="the PTB-XL-500 folder the shards came from")
    parser.add_argument("--export", action="append", required=True, metavar="NAME=PATH", help="an export to score")
    parser.add_argument("--splits", nargs="*", default=["test", "val"], help="PTB-XL splits for part 1 (none: skip)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-concepts"))
    args = parser.parse_args()
    exports = dict(item.split("=", 1) for item in args.export)

    summary: dict = {}
    for split in args.splits:
        columns: dict[str, dict[str, float]] = {}
        for i, (name, export) in enumerate(exports.items()):
            results, curves = evaluate_export(
                export,
                str(args.shards),
                "concepts",
                ["zero-shot"],
                args.workdir / f"eval-{name}-{split}",
                split=split,
                baselines=i == 0,
            )
            if i == 0:
                columns["random weights"] = results["baselines"]["random-weights"]["zero_shot"]["per_class_auroc"]
                names = results["class_names"]
                positives = {names[c]: int(n) for c, n in zip(results["codes"], curves["targets"].sum(axis=0))}
            columns[name] = results["zero_shot"]["per_class_auroc"]
        named = {column: {names[c]: v for c, v in values.items()} for column, values in columns.items()}
        summary[split] = named
        print_table(f"PTB-XL-500 {split} split ({results['rows']} ECGs): zero-shot AUROC by concept", named, positives)

    archive = args.workdir / "snomed-archive"
    written = write_snomed_archive(args.ptbxl, archive)
    snomed_shards = args.workdir / "snomed-shards"
    prepare_main(
        [
            "--source",
            "wfdb",
            "--input",
            str(archive),
            "--output",
            str(snomed_shards),
            "--report",
            "labels",
            "--min-report-words",
            "0",
            "--overwrite",
        ]
    )
    task = load_task("concepts")
    names = {code: task.classes[code].name for code in task.codes}
    across, rows = {}, {}
    for name, export in exports.items():
        across[f"{name}, SNOMED archive"], rows["SNOMED archive"] = all_rows_auroc(
            export, snomed_shards, ["train", "val", "test"]
        )
        across[f"{name}, SCP shards"], rows["SCP shards"] = all_rows_auroc(export, args.shards, ["val", "test"])
    named = {column: {names[c]: v for c, v in values.items()} for column, values in across.items()}
    summary["snomed_archive"] = named
    print_table(
        f"The {written} held-out records as a SNOMED CT archive ({rows['SNOMED archive']} rows kept) and as "
        f"SCP-labelled shards ({rows['SCP shards']} rows, reports under 4 words rejected at prepare)",
        named,
    )
    (args.workdir / "bench_concepts.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
