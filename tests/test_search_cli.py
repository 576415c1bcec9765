"""`pipelines.search` end to end: a tiny MELP export scores the session's synthetic shards with
--embeddings (which builds OUTPUT/index), then text, indexed-id and WFDB-record queries print k neighbours
(an ECG's own id first), `--build` rebuilds the index, and bad input exits 2 naming the field."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
import torch

from models.factory import create_model
from models.model import export_fingerprint
from pipelines.retrieval import MAX_QUERY_CHARS, EmbeddingIndex
from pipelines.score import score
from pipelines.search import main as search_main
from pipelines.search import score_parts
from pipelines.storage import Location
from pipelines.synthetic import SyntheticConfig, generate_ptbxl_layout

pytestmark = pytest.mark.slow  # every test searches the index of a whole scoring job


@pytest.fixture(scope="module")
def export(tiny_export):
    return tiny_export("melp")


@pytest.fixture(scope="module")
def scores(ray_cluster, export, synthetic_shards, tmp_path_factory):
    output = tmp_path_factory.mktemp("search-scores") / "scores"
    score(str(export), str(synthetic_shards), str(output), embeddings=True)
    return output


def search(capsys, *argv: str) -> list[list[str]]:
    """Rows (rank, ecg_id, score) printed by a successful search, after the header."""
    assert search_main(list(argv)) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert header == "rank\tecg_id\tscore"
    return [row.split("\t") for row in rows]


def refused(capsys, *argv: str) -> str:
    """What a search that must exit 2 says."""
    with pytest.raises(SystemExit) as exit_:
        search_main(list(argv))
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_scoring_with_embeddings_builds_an_index_that_text_and_ecg_queries_search(
    export, scores, tmp_path, capsys, restore_logging
):
    index = EmbeddingIndex.load(scores / "index")
    assert index.count == 240 and index.record["kind"] == "exact"
    assert index.record["model_fingerprint"] == export_fingerprint(export)
    assert index.record["model"] == str(export)

    rows = search(capsys, "--index", str(scores / "index"), "--text", "atrial fibrillation", "--k", "5")
    assert [row[0] for row in rows] == ["1", "2", "3", "4", "5"]
    assert all(row[1] in index for row in rows)
    assert [float(row[2]) for row in rows] == sorted((float(row[2]) for row in rows), reverse=True)

    some_id = index.ids[17]
    rows = search(capsys, "--index", str(scores / "index"), "--ecg", some_id, "--k", "10")
    assert len(rows) == 10 and rows[0][1] == some_id and float(rows[0][2]) == pytest.approx(1, abs=1e-4)

    # A WFDB record (the session shards' own archive, made again) goes through the scorer's preprocessing:
    # it lands on its own stored embedding.
    archive = generate_ptbxl_layout(tmp_path / "archive", SyntheticConfig(n=240, seed=1))
    record = sorted(archive.rglob("*_hr.hea"))[3].with_suffix("")
    rows = search(capsys, "--index", str(scores / "index"), "--ecg", str(record), "--k", "3", "--model", str(export))
    assert len(rows) == 3 and rows[0][1] == f"synthetic/{record.name.removesuffix('_hr')}"
    assert float(rows[0][2]) == pytest.approx(1, abs=1e-3)


def test_build_rebuilds_the_index_of_a_scoring_output(export, scores, capsys, restore_logging):
    (scores / "index" / "index.json").unlink()
    assert search_main(["--build", str(scores), "--model", str(export)]) == 0
    assert "indexed 240 ECGs (exact)" in capsys.readouterr().out
    assert EmbeddingIndex.load(scores / "index").record["model"] == str(export)

    parts = scores.parent / "without-embeddings"
    shutil.copytree(scores / "scores", parts / "scores")
    for path in (parts / "scores").glob("*.parquet"):
        pq.write_table(pq.read_table(path).drop_columns(["embedding"]), path)
    with pytest.raises(ValueError, match="has no embedding column: rerun pipelines.score with --embeddings"):
        list(score_parts(Location.of(parts)))
    assert "is not a pipelines.score output" in refused(capsys, "--build", str(parts))


def test_bad_input_exits_2_naming_the_field(export, scores, tmp_path, capsys, restore_logging):
    index = str(scores / "index")
    assert "--text: is empty" in refused(capsys, "--index", index, "--text", "")
    assert "--text: 1,001 characters" in refused(capsys, "--index", index, "--text", "x" * (MAX_QUERY_CHARS + 1))
    assert "--k: 0 neighbours" in refused(capsys, "--index", index, "--text", "afib", "--k", "0")
    assert "--k: 10000 neighbours" in refused(capsys, "--index", index, "--text", "afib", "--k", "10000")
    assert "--ecg: 'nope' is neither an ecg_id in the index nor a WFDB record" in refused(
        capsys, "--index", index, "--ecg", "nope"
    )
    assert "no embedding index here" in refused(capsys, "--index", str(tmp_path / "nowhere"), "--text", "afib")
    assert "give a query" in refused(capsys, "--index", index)
    assert "--model: " in refused(capsys, "--index", index, "--text", "afib", "--model", str(tmp_path / "gone"))

    torch.manual_seed(1)
    other = tmp_path / "other-export"
    create_model("tiny", objective="melp")[0].save_pretrained(other)
    said = refused(capsys, "--index", index, "--text", "afib", "--model", str(other))
    recorded = json.loads((scores / "index" / "index.json").read_text())["model_fingerprint"]
    assert f"fingerprint {recorded}" in said and f"this model ({export_fingerprint(other)})" in said
