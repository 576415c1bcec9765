"""The two-tower ECG-text model: ECG tower, text tower, projections to a shared space, objective.

    model = ECGTextModel(load_config("tiny"))
    losses = model(model.collate(signals, lead_masks, reports))   # {"rhythm_loss": …, "loss": …}
    drafts = model.eval().generate_reports(signals, lead_masks)   # MELP: one DraftedReport per ECG
    model.save_pretrained("runs/x/export")                        # config.json, model.safetensors, tokenizer/
    same = ECGTextModel.from_pretrained("runs/x/export")          # no DeepSpeed, no hub, no pickle
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from models.caption_decoder import CaptionDecoder
from models.config import ModelConfig, objective_config_class
from models.ecg_tower import ECGTower
from models.masked_language_modeling import MaskedLMHead
from models.multimodal_decoder import MultimodalCaptioner
from models.objectives import build_objective
from models.report_generation import DraftedReport, DraftOptions, generate_reports
from models.text_tower import TextTower

FORMAT_VERSION = 4
"""4: C-MELT is its authors' single masked pass through a co-attention fusion (new weights: a C-MELT export
of an older format is refused); MELP's config records `text.causal` (absent: the bidirectional tower it was).
3 (read too): MELP's beat level is GLoRIA's, with sentences from the report's own pass through
`objective.sentence_projection`, and its global embedding the mean of its beats (`ecg.rhythm_pooling`);
a MELP export of format 1 or 2 is refused: it lacks that projection and has a pooler the format drops.
2 (read too): config.json records `trained_with` (the data's preprocessing and the validation's label task).
1 (read too): no `trained_with`; its objective section lists every objective's fields."""
READABLE_VERSIONS = (1, 2, 3, 4)
ARCHITECTURE_SINCE_VERSION = {"melp": 3, "cmelt": 4}
"""The first format whose weights an objective's present architecture reads."""
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR = "config.json", "model.safetensors", "tokenizer"


class ECGTextModel(nn.Module):
    """ECG tower + text tower, each projected to `objective.embed_dim`, trained by the objective."""

    def __init__(self, config: ModelConfig, text: TextTower | None = None) -> None:
        super().__init__()
        self.config = config
        self.trained_with: dict | None = None
        """What the pipelines recorded of the training data (preprocessing, label task); saved in
        config.json, None when unknown (a fresh model, or an export of format 1)."""
        self.ecg = ECGTower(config.ecg)
        self.text = text if text is not None else TextTower(config.text)
        self.ecg_projection = nn.Linear(config.ecg.width, config.objective.embed_dim)
        self.text_projection = text_projection(self.text.hidden_size, config.objective.embed_dim, config.text.causal)
        self.objective = build_objective(config, self.text)
        for name in self.objective.unused_modules:
            getattr(self, name).requires_grad_(False)

    def encode_ecg(self, signal: torch.Tensor, lead_mask: torch.Tensor | None = None) -> torch.Tensor:
        """signal [B, 12, T], lead_mask [B, 12] bool (None: all leads) → L2-normalised [B, D]."""
        return F.normalize(self.ecg_projection(self.ecg(signal, lead_mask).pooled), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Tokenized text [B, L] → L2-normalised [B, D]."""
        return F.normalize(self.text_projection(self.text(input_ids, attention_mask).pooled), dim=-1)

    def encode_reports(self, reports: Sequence[str]) -> torch.Tensor:
        """Strings → L2-normalised [n, D]; what the zero-shot classifier embeds prompts with."""
        tokens = self.text.tokenize(list(reports))
        device = next(self.parameters()).device
        return self.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))

    @property
    def drafts_reports(self) -> bool:
        """Whether the objective trains a caption decoder (MELP), so `generate_reports` can draft."""
        return isinstance(getattr(self.objective, "caption", None), CaptionDecoder | MultimodalCaptioner)

    def generate_reports(
        self, signal: torch.Tensor, lead_mask: torch.Tensor | None = None, options: DraftOptions = DraftOptions()
    ) -> list[DraftedReport]:
        """Draft a report per ECG (signal [B, 12, T], lead_mask [B, 12] bool or None) with the caption
        decoder: models.report_generation. NoCaptionDecoder (a ValueError) when the objective has none."""
        return generate_reports(self, signal, lead_mask, options)

    def collate(self, signal, lead_mask, reports: Sequence[str]) -> dict[str, torch.Tensor]:
        """One training batch from shard columns: signal [B, 12, T], lead_mask [B, 12], reports."""
        batch = {
            "signal": torch.as_tensor(np.array(signal)),  # a copy: Ray Data hands out read-only arrays
            "lead_mask": torch.as_tensor(np.asarray(lead_mask, dtype=bool)),
        }
        batch.update(self.objective.text_inputs(list(reports), self.text))
        return batch

    def parameters_used_outside_their_module(self) -> list[tuple[nn.Module, nn.Parameter]]:
        """(module, parameter) pairs where `module`'s forward reads a parameter that another module owns:
        the text tower's word embeddings, tied into the caption decoder's and the MLM head's output
        layers, and the ECG tower's own parameters, read by objective code that calls the tower's
        `embed` / `encode` steps directly. ZeRO-3 gathers a parameter only while its owner runs, so
        a trainer registers these (`deepspeed.zero.register_external_parameter`)."""
        word_embeddings = self.text.word_embeddings.weight
        pairs = [(m, word_embeddings) for m in self.objective.modules() if isinstance(m, CaptionDecoder | MaskedLMHead)]
        pairs += [(self.objective, parameter) for parameter in self.ecg.parameters(recurse=False)]
        return pairs

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The objective's named loss terms for a collated batch; `loss` is the weighted total."""
        return self.objective(self, batch)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write config.json (model config + text encoder config), model.safetensors, tokenizer/."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "format_version": FORMAT_VERSION,
            "model": self.config.to_dict(),
            "trained_with": self.trained_with,
            "text_encoder": self.text.encoder_config_dict(),
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        state = {name: tensor.detach().contiguous() for name, tensor in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
        self.text.save_tokenizer(directory / TOKENIZER_DIR)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, load_weights: bool = True) -> ECGTextModel:
        """Rebuild a saved model; raises ValueError naming the file and what is wrong with it.
        `load_weights=False` gives the same architecture freshly initialised (a random-weights baseline).

        Before anything is allocated, the tensor shapes in the safetensors header are checked against
        those the config builds (a skeleton on the meta device), so a config that declares a huge
        vocabulary or width is refused without its memory; weights holding NaN or Inf are refused."""
        directory = Path(directory)
        weights_path = directory / WEIGHTS_FILE
        for path in (directory / CONFIG_FILE, weights_path, directory / TOKENIZER_DIR):
            if not path.exists():
                raise ValueError(f"{directory} is not a saved model: {path.name} is missing")
        saved = read_saved_config(directory)
        with torch.device("meta"):
            skeleton = cls._built_from(saved, directory)
        expected = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
        _check_shapes(expected, _saved_shapes(weights_path), weights_path)
        state = _finite_weights(weights_path) if load_weights else None
        model = cls._built_from(saved, directory)
        if state is not None:
            model.load_state_dict(state)
        return model

    @classmethod
    def _built_from(cls, saved: SavedConfig, directory: Path) -> ECGTextModel:
        """The architecture a saved config describes, freshly initialised (on the current default device)."""
        text = TextTower.from_saved(saved.model.text, saved.text_encoder, directory / TOKENIZER_DIR)
        model = cls(saved.model, text=text)
        model.trained_with = saved.trained_with
        return model


def text_projection(hidden_size: int, embed_dim: int, causal: bool) -> nn.Module:
    """[B, H] → [B, D]: linear, or for a causal tower MELP's `proj_t`, Linear → GELU → Linear (the authors'
    hidden width 256, their embed_dim)."""
    if not causal:
        return nn.Linear(hidden_size, embed_dim)
    return nn.Sequential(nn.Linear(hidden_size, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))


@dataclass(frozen=True)
class SavedConfig:
    """What a saved model's config.json holds."""

    model: ModelConfig
    text_encoder: dict
    trained_with: dict | None


def read_saved_config(directory: str | os.PathLike) -> SavedConfig:
    """A saved model's config.json alone (no weights, no model built); ValueError naming the file."""
    config_path = Path(directory) / CONFIG_FILE
    if not config_path.exists():
        raise ValueError(f"{directory} is not a saved model: {CONFIG_FILE} is missing")
    try:
        saved = json.loads(config_path.read_text())
        version = saved["format_version"]
        if version not in READABLE_VERSIONS:
            raise ValueError(f"format_version {version}; this code reads {', '.join(map(str, READABLE_VERSIONS))}")
        model_dict = saved["model"] if version > 1 else _objective_fields_of_its_own(saved["model"])
        objective = model_dict.get("objective", {}).get("name", "melp")
        since = ARCHITECTURE_SINCE_VERSION.get(objective, 1)
        if version < since:
            raise ValueError(
                f"a {objective} export of format_version {version}, from before its architecture became its "
                f"authors' (format {since}); its weights do not fit the model this code builds: train it again"
            )
        return SavedConfig(ModelConfig.from_dict(model_dict), saved["text_encoder"], saved.get("trained_with"))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{config_path} is not a valid model config: {type(error).__name__}: {error}") from None


def export_fingerprint(directory: str | os.PathLike) -> str:
    """A short content hash of a saved model (config.json and model.safetensors): what a batch-scoring
    output or a health check records to say which export made it. 16 hex digits."""
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        with open(Path(directory) / name, "rb") as file:
            for block in iter(lambda: file.read(2**20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _objective_fields_of_its_own(model: dict) -> dict:
    """A format-1 model section, whose objective lists every objective's fields, cut to its own's."""
    objective = model.get("objective", {})
    own = {f.name for f in fields(objective_config_class(objective.get("name", "melp")))}
    return {**model, "objective": {k: v for k, v in objective.items() if k in own}}


def _saved_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape, from the safetensors header alone (no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as file:
            return {name: tuple(file.get_slice(name).get_shape()) for name in file.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is damaged or not a safetensors file: {error}") from None


def _check_shapes(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], path: Path) -> None:
    """Name every missing, unexpected and mis-shaped tensor before loading."""
    problems = [f"missing {name}" for name in expected.keys() - found.keys()]
    problems += [f"unexpected {name}" for name in found.keys() - expected.keys()]
    problems += [
        f"{name} has shape {found[name]}, the config builds {shape}"
        for name, shape in expected.items()
        if name in found and found[name] != shape
    ]
    if problems:
        raise ValueError(f"{path} does not match its config: {_first_few(problems, 8)}")


def _finite_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; ValueError naming the file and the tensors holding NaN or Inf."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is damaged or not a safetensors file: {error}") from None
    broken = [name for name, tensor in state.items() if _holds_nan_or_inf(tensor)]
    if broken:
        raise ValueError(f"{path} holds NaN or Inf weights in {len(broken)} tensor(s): {_first_few(broken, 5)}")
    return state


def _holds_nan_or_inf(tensor: torch.Tensor) -> bool:
    """Whether a floating-point tensor holds NaN or ±Inf: its minimum and maximum (one pass, NaN propagates)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return False
    return not torch.isfinite(torch.stack(torch.aminmax(tensor))).all()


def _first_few(items: list[str], n: int) -> str:
    items = sorted(items)
    return "; ".join(items[:n]) + (f"; … {len(items) - n} more" if len(items) > n else "")
