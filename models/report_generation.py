"""Report drafting: MELP's caption decoder, searched by transformers' generation utilities.

    drafts = model.generate_reports(signal, lead_mask, DraftOptions(num_beams=4))   # one DraftedReport per ECG

The decoder was trained teacher-forced on the tokenized report (the text tower's start token in: [BOS] for a
causal tower, [CLS] otherwise; its end token, [SEP], last), so a draft starts from the start token and ends at
the end token or the length limit. Greedy, beam search, sampling, the repetition guards and the padding of
finished rows are `GenerationMixin.generate`'s own; `CaptionDrafter` only adapts the decoder to it: a causal
LM over token ids whose forward reads the decoder's ECG context (the caption queries, or the ECG tokens) as a
model kwarg (expanded per beam by `generate`) and recomputes the whole prefix each step, through the causal
text tower too where the decoder reads its states (no KV cache: drafts are at most the text tower's
max_length tokens).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import GenerationConfig, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from models.caption_decoder import CaptionDecoder
from models.multimodal_decoder import MultimodalCaptioner
from models.text_tower import TextTower

if TYPE_CHECKING:
    from models.model import ECGTextModel

_SPACED_HYPHEN = re.compile(r"(?<=\w) - (?=\w)")


@dataclass(frozen=True)
class DraftOptions:
    """How to search for a draft. Greedy by default; `num_beams` > 1 is beam search, `do_sample` samples."""

    max_tokens: int = 0
    """Most tokens drafted, the end token included; 0: the longest trained report (`draft_limit`)."""
    num_beams: int = 1
    no_repeat_ngram_size: int = 3
    """No n-gram of this many tokens appears twice in a draft; 0 turns the guard off."""
    repetition_penalty: float = 1.0
    """CTRL's penalty on tokens already drafted; 1.0 is none."""
    do_sample: bool = False
    temperature: float = 1.0
    """Of sampling (the full distribution, no top-k or top-p cut); ignored unless do_sample."""
    seed: int = 0

    def __post_init__(self) -> None:
        limits = {  # field: (type, lowest allowed, whether the lowest is excluded)
            "max_tokens": (int, 0, False),
            "num_beams": (int, 1, False),
            "no_repeat_ngram_size": (int, 0, False),
            "repetition_penalty": (float, 0.0, True),
            "temperature": (float, 0.0, True),
            "seed": (int, 0, False),
        }
        for name, (kind, lowest, excluded) in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int if kind is int else int | float):
                raise ValueError(
                    f"DraftOptions.{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}"
                )
            if value < lowest or (excluded and value == lowest) or not math.isfinite(value):
                raise ValueError(f"DraftOptions.{name} must be {'>' if excluded else '>='} {lowest}, got {value!r}")
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"DraftOptions.do_sample must be True or False, got {self.do_sample!r}")


@dataclass(frozen=True)
class DraftedReport:
    text: str
    logprob: float
    """Sum of log p of the drafted tokens, the end token included, under the decoder's own distribution (no penalties)."""
    tokens: int
    """How many tokens that sum is over."""


class NoCaptionDecoder(ValueError):
    """The model's objective trains no caption decoder (C-MELT, METS, MELP stage 1), so it cannot draft."""


class CaptionDrafterConfig(PretrainedConfig):
    model_type = "ecg_fm_caption_drafter"

    def __init__(self, vocab_size: int = 0, **kwargs) -> None:
        self.vocab_size = vocab_size
        super().__init__(is_encoder_decoder=False, **kwargs)


class CaptionDrafter(PreTrainedModel, GenerationMixin):
    """The caption decoder as a causal LM that `generate` can drive. Holds the model's own modules (no copy)."""

    config_class = CaptionDrafterConfig

    def __init__(
        self, config: CaptionDrafterConfig, caption: CaptionDecoder | MultimodalCaptioner, text: TextTower
    ) -> None:
        super().__init__(config)
        self.caption = caption
        self.text = text

    def forward(
        self,
        input_ids: torch.Tensor,
        ecg_context: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        **_generation_flags,
    ) -> CausalLMOutput:
        """input_ids [b, L] (the draft so far), ecg_context [b, Q, W] (the decoder's `ecg_context`),
        attention_mask [b, L] or None (all tokens) → logits [b, L, V], or of the last `logits_to_keep`
        positions (`generate` asks for 1). It also passes flags such as use_cache; none apply here."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        logits = self.caption.prefix_logits(self.text, input_ids, attention_mask, ecg_context, logits_to_keep)
        return CausalLMOutput(logits=logits)


def caption_decoder_of(model: ECGTextModel) -> CaptionDecoder | MultimodalCaptioner:
    """The model's caption decoder; NoCaptionDecoder naming the objective when it has none."""
    if not model.drafts_reports:
        raise NoCaptionDecoder(
            f"objective {model.config.objective.name!r} trains no caption decoder, so this model cannot draft "
            "reports; drafting needs a MELP export (objective 'melp')"
        )
    return model.objective.caption


@torch.no_grad()
def generate_reports(
    model: ECGTextModel, signal: torch.Tensor, lead_mask: torch.Tensor | None, options: DraftOptions
) -> list[DraftedReport]:
    """signal [B, 12, T] float, lead_mask [B, 12] bool (None: all leads) → B drafts in batch order.

    Runs as the model is (call `.eval()` first, as the pipelines' loaders do); deterministic for
    `options.seed` (the search runs under its own forked RNG)."""
    caption = caption_decoder_of(model)
    text = model.text
    max_tokens = _max_tokens(options, model)
    device = next(model.parameters()).device
    signal = torch.as_tensor(signal, device=device)
    if signal.shape[0] == 0:
        return []
    if lead_mask is None:
        lead_mask = torch.ones(signal.shape[0], signal.shape[1], dtype=torch.bool, device=device)
    ecg_context = caption.ecg_context(model.ecg(signal, torch.as_tensor(lead_mask, device=device)).tokens)
    drafter = CaptionDrafter(CaptionDrafterConfig(text.vocab_size), caption, text)
    prompt = torch.full((signal.shape[0], 1), text.report_start_id, dtype=torch.long, device=device)  # [B, 1]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(options.seed)
        sequences = drafter.generate(
            prompt, generation_config=_generation_config(options, max_tokens, text), ecg_context=ecg_context
        )  # [B, 1 + n]
    drafted = sequences[:, 1:]  # [B, n]
    counted = _through_first(drafted, text.report_end_id)  # [B, n] bool
    logprobs = _token_logprobs(drafter, sequences, ecg_context).masked_fill(~counted, 0.0).sum(dim=1)  # [B]
    texts = text.tokenizer.batch_decode(
        drafted.masked_fill(~counted, text.pad_token_id),
        skip_special_tokens=True,
        clean_up_tokenization_spaces=True,
    )
    return [
        DraftedReport(text=_joined_hyphens(text.strip()), logprob=float(logprob), tokens=int(n))
        for text, logprob, n in zip(texts, logprobs.tolist(), counted.sum(dim=1).tolist(), strict=True)
    ]


def suppressed_token_ids(text: TextTower) -> list[int]:
    """Tokens a draft never holds: every special token but the end token ([PAD], [CLS], [BOS], [MASK], [UNK]:
    never a word of a training report)."""
    return sorted(set(text.tokenizer.all_special_ids) - {text.report_end_id})


def _joined_hyphens(text: str) -> str:
    """WordPiece decoding spaces out a hyphen between words ("non - specific"); reports write "non-specific"."""
    return _SPACED_HYPHEN.sub("-", text)


def draft_limit(model: ECGTextModel) -> int:
    """The most tokens a draft may hold: the longest trained report's words and its end token, max_length less
    the start token (and the trailing [CLS] of a causal tower)."""
    return model.config.text.max_length - (2 if model.config.text.causal else 1)


def _max_tokens(options: DraftOptions, model: ECGTextModel) -> int:
    """options.max_tokens, or its default; ValueError when the decoder's positions cannot reach it."""
    limit = draft_limit(model)
    if options.max_tokens > limit:
        raise ValueError(
            f"DraftOptions.max_tokens {options.max_tokens} exceeds what the caption decoder was trained for: "
            f"{limit} (the text tower's max_length {model.config.text.max_length} less its start and summary tokens)"
        )
    return options.max_tokens or limit


def _generation_config(options: DraftOptions, max_tokens: int, text: TextTower) -> GenerationConfig:
    """The whole search, spelled out (no library default left to chance): sampling is over the full
    distribution (top_k 0, top_p 1); beams rank by log-probability per token (length_penalty 1)."""
    sampling = {"temperature": options.temperature, "top_k": 0, "top_p": 1.0} if options.do_sample else {}
    return GenerationConfig(
        max_new_tokens=max_tokens,
        num_beams=options.num_beams,
        do_sample=options.do_sample,
        **sampling,
        no_repeat_ngram_size=options.no_repeat_ngram_size,
        repetition_penalty=options.repetition_penalty,
        length_penalty=1.0,
        early_stopping=False,
        suppress_tokens=suppressed_token_ids(text),
        bos_token_id=text.report_start_id,
        eos_token_id=text.report_end_id,
        pad_token_id=text.pad_token_id,
        use_cache=False,
    )


def _through_first(tokens: torch.Tensor, eos: int) -> torch.Tensor:
    """[B, n] ids → bool [B, n]: True up to and including each row's first `eos` (all of a row without one)."""
    is_eos = (tokens == eos).long()
    return (is_eos.cumsum(dim=1) - is_eos) == 0


def _token_logprobs(drafter: CaptionDrafter, sequences: torch.Tensor, ecg_context: torch.Tensor) -> torch.Tensor:
    """sequences [B, 1 + n] (start token + draft) → log p of each drafted token [B, n], teacher-forced, one
    forward."""
    inputs = sequences[:, :-1]  # [B, n]
    logits = drafter(inputs, ecg_context).logits  # [B, n, V]
    return logits.log_softmax(dim=-1).gather(2, sequences[:, 1:, None]).squeeze(2)  # [B, n]
