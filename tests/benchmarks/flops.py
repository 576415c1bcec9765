"""Model FLOPs of the ECG tower, counted from its config, and the bf16 dense peak of known GPUs.

    flops = ecg_tower_flops(load_config("melp-base"))      # TowerFlops per sample; .forward, .train
    peak = bf16_peak_tflops(torch.cuda.get_device_name())   # 989.0 on an H100/H200 SXM; None if unknown
    mfu = samples_per_s * flops.train / (peak * 1e12)

Only matrix products count (2 FLOPs per multiply-add), as in model-FLOPs utilisation: the patch projection
and the absent-lead embedding, each block's QKV, attention scores, attention-weighted values, output
projection and MLP, and the two attentional poolers. Norms, GELU, softmax and additions are left out.
`train` is 3 × `forward` (the backward pass does two products per forward product), the usual convention:
it slightly over-counts, since no gradient flows into the input signal.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.config import ModelConfig

BF16_DENSE_TFLOPS = (
    ("H200 NVL", 835.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 125.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
)
"""NVIDIA's datasheet bf16 tensor-core peak without sparsity, by a piece of `torch.cuda.get_device_name()`;
the first match wins, so the specific names (NVL, PCIe) stand before the family (SXM)."""


@dataclass(frozen=True)
class TowerFlops:
    """Forward FLOPs of the ECG tower for one sample, by part."""

    patch_embedding: int
    attention: int
    """QKV and output projections, scores and weighted values, summed over the blocks."""
    mlp: int
    poolers: int

    @property
    def forward(self) -> int:
        return self.patch_embedding + self.attention + self.mlp + self.poolers

    @property
    def train(self) -> int:
        """Forward + backward: 3 × forward."""
        return 3 * self.forward


def ecg_tower_flops(config: ModelConfig) -> TowerFlops:
    """Matmul FLOPs of one sample through `config.ecg`: N = T / P tokens of width W, L blocks, MLP width F,
    poolers of K queries (and of 1, where the global embedding has its own query) over the N tokens."""
    ecg = config.ecg
    n, w, depth = ecg.n_patches, ecg.width, ecg.depth
    hidden = int(w * ecg.mlp_ratio)
    patch = 2 * n * (ecg.n_leads * ecg.patch_size) * w + 2 * ecg.n_leads * w  # projection; absent-lead embedding
    attention = depth * (2 * n * w * 3 * w + 2 * 2 * n * n * w + 2 * n * w * w)  # QKV; QKᵀ and AV; output
    mlp = depth * 2 * 2 * n * w * hidden
    poolers = sum(
        2 * q * w * w + 2 * n * w * 2 * w + 2 * 2 * q * n * w + 2 * q * w * w  # Q; K and V; QKᵀ and AV; output
        for q in ((1,) if ecg.rhythm_pooling == "query" else ()) + (ecg.n_beat_queries,)
    )
    return TowerFlops(patch_embedding=patch, attention=attention, mlp=mlp, poolers=poolers)


def bf16_peak_tflops(device_name: str) -> float | None:
    """The bf16 dense peak of the GPU called `device_name`, or None for one the table does not know."""
    return next((peak for piece, peak in BF16_DENSE_TFLOPS if piece in device_name), None)
