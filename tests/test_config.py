"""Model configs: named JSON files, overrides as a sweep passes them, and clear errors."""

from __future__ import annotations

import json

import pytest

from models.config import ModelConfig, available_configs, load_config
from pipelines.training.overrides import parse_overrides


def test_named_configs_load_and_round_trip():
    assert {"tiny", "merl-vit-tiny", "merl-vit-small", "melp-base"} <= set(available_configs())
    for name in available_configs():
        config = load_config(name)
        assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert (load_config("merl-vit-tiny").ecg.width, load_config("merl-vit-tiny").ecg.depth) == (192, 12)
    assert (load_config("melp-base").ecg.width, load_config("melp-base").ecg.depth) == (768, 8)
    melp = load_config("melp-base").objective  # the authors' main_pretrain.py: clip 1.0, caption 2.0, local 0.2
    assert (melp.rhythm_weight, melp.token_weight, melp.beat_weight) == (1.0, 2.0, 0.2)


def test_overrides_objectives_and_files(tmp_path):
    config = load_config("tiny", {"objective.name": "mets", "objective.init_temperature": 0.05, "text.pooling": "cls"})
    assert (config.objective.name, config.objective.init_temperature, config.text.pooling) == ("mets", 0.05, "cls")
    cmelt = load_config("tiny", {"objective.ecg_mask_ratio": 0.6}, objective="cmelt").objective
    assert (cmelt.ecg_mask_ratio, cmelt.decoder_width) == (0.6, 32)  # the file's cmelt sub-section applies
    assert load_config("tiny").objective.caption_layers == 1  # and its melp one to melp
    switched = load_config("tiny").with_overrides({"objective.name": "cmelt"}).objective
    assert (switched.name, switched.embed_dim) == ("cmelt", 32)  # shared fields kept
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"ecg": {"width": 64, "heads": 4, "pool_heads": 4}}))
    assert load_config(path).ecg.width == 64 and load_config(path).objective.name == "melp"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["objective.name=clip"], "unknown objective 'clip'"),
        (["ecg.widht=3"], "unknown config field 'ecg.widht'"),
        (["objective.ecg_mask_ratio=0.5"], "unknown config field 'objective.ecg_mask_ratio' for objective melp"),
        (["objective.name=cmelt", "objective.ecg_mask_ratio=1.5"], r"ecg_mask_ratio must be in \[0, 1\)"),
        (["objective.name=cmelt", "objective.ecg_targets=pixel"], "ecg_targets must be one of lead, patch, got 'pixel'"),
        (["objective.name=cmelt", "objective.decoder_heads=3"], "decoder_width 32 must divide by decoder_heads 3"),
        (["ecg.patch_size=33"], "not a multiple of patch_size"),
        (["objective.init_temperature=0.001"], "exceeds max_logit_scale"),
        (["text.freeze_layers=-2"], "freeze_layers"),
        (["width"], "is not section.field=value"),
        (["widht=3"], "expected section.field=value"),
    ],
)
def test_bad_values_fail_with_a_message(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config("tiny", parse_overrides(overrides).model)


def test_unknown_name_lists_the_named_configs():
    with pytest.raises(ValueError, match="no model config 'huge'; named configs: melp-base"):
        load_config("huge")
