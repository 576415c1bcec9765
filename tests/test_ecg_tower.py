"""The ECG tower (1-D ViT) and its attentional poolers: shapes, patch order, MAE masking, absent
leads, lead dropping, size of the MERL config, and that it trains.

    .venv/bin/python -m pytest tests/test_ecg_tower.py -q
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from models.config import load_config
from models.ecg_tower import ECGOutput, ECGTower
from models.poolers import AttentionalPooler
from pipelines.data.leads import STANDARD_LEADS

CONFIG = load_config("tiny").ecg  # 12 leads, T 5000, patch 50 → N 100, width 32, 2 blocks, 4 beat queries
BATCH = 3


def leads_mask(names: tuple[str, ...], batch: int = BATCH) -> torch.Tensor:
    """bool [batch, 12], True for the named standard leads."""
    row = torch.tensor([name in names for name in STANDARD_LEADS])
    return row.expand(batch, -1).clone()


@pytest.fixture
def tower() -> ECGTower:
    torch.manual_seed(0)
    return ECGTower(CONFIG).eval()


@pytest.fixture
def signal() -> torch.Tensor:
    return torch.randn(BATCH, CONFIG.n_leads, CONFIG.n_samples, generator=torch.Generator().manual_seed(1))


def test_forward_shapes(tower, signal):
    n, w, k = CONFIG.n_patches, CONFIG.width, CONFIG.n_beat_queries
    out = tower(signal)
    assert isinstance(out, ECGOutput)
    assert out.tokens.shape == (BATCH, n, w)  # [B, N, W]
    assert out.pooled.shape == (BATCH, w)  # [B, W]
    assert out.beats.shape == (BATCH, k, w)  # [B, K, W]
    tokens = tower.embed(signal, leads_mask(STANDARD_LEADS))
    assert tokens.shape == (BATCH, n, w)
    assert tower.encode(tokens[:, :7]).shape == (BATCH, 7, w)  # any token count


def test_patchify_order_and_round_trip(tower, signal):
    size = CONFIG.patch_size
    patches = tower.patchify(signal)
    assert patches.shape == (BATCH, CONFIG.n_patches, CONFIG.n_leads * size)
    for b, n, c, p in [(0, 0, 0, 0), (1, 3, 5, 7), (2, 99, 11, 49)]:
        assert patches[b, n, c * size + p] == signal[b, c, n * size + p]
    assert torch.equal(tower.unpatchify(patches), signal)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75, 0.9])
def test_random_masking(tower, ratio):
    n, w = CONFIG.n_patches, CONFIG.width
    tokens = torch.arange(BATCH * n * w, dtype=torch.float32).reshape(BATCH, n, w)  # every value distinct
    kept, mask, ids_restore = tower.random_masking(tokens, ratio)
    n_keep = int(n * (1 - ratio))
    assert kept.shape == (BATCH, n_keep, w)
    assert mask.shape == ids_restore.shape == (BATCH, n)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask.sum(dim=1).tolist() == [n - n_keep] * BATCH
    fillers = torch.zeros(BATCH, n - n_keep, w)
    restored = torch.cat([kept, fillers], dim=1).gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, w))
    visible = mask == 0  # [B, N]
    assert torch.equal(restored[visible], tokens[visible])
    assert not restored[~visible].any()


def test_random_masking_differs_per_sample(tower):
    tokens = torch.randn(4, CONFIG.n_patches, CONFIG.width)
    _, mask, _ = tower.random_masking(tokens, 0.5)
    assert len({tuple(row.tolist()) for row in mask}) > 1


LIMB = ("I", "II", "III", "aVR", "aVL", "aVF")


@pytest.mark.parametrize("present", [("II",), ("I", "II"), LIMB, STANDARD_LEADS])
def test_absent_lead_values_do_not_matter(tower, signal, present):
    lead_mask = leads_mask(present)
    out = tower(signal, lead_mask)
    changed = signal.clone()
    changed[~lead_mask] = 100.0 * torch.randn(int((~lead_mask).sum()), CONFIG.n_samples)
    again = tower(changed, lead_mask)
    for name in ("tokens", "pooled", "beats"):
        assert torch.equal(getattr(out, name), getattr(again, name))
    changed[:, STANDARD_LEADS.index("II")] += 1.0  # a present lead does matter
    assert not torch.equal(tower(changed, lead_mask).pooled, out.pooled)


def test_model_is_told_which_leads_are_absent(tower, signal):
    """A lead that is absent differs from a present lead that is flat zero."""
    flat_v1 = signal.clone()
    flat_v1[:, STANDARD_LEADS.index("V1")] = 0.0
    all_present = leads_mask(STANDARD_LEADS)
    v1_absent = leads_mask(tuple(name for name in STANDARD_LEADS if name != "V1"))
    assert not torch.allclose(tower(flat_v1, all_present).pooled, tower(flat_v1, v1_absent).pooled)


def test_input_validation(tower, signal):
    with pytest.raises(ValueError, match="must be \\[B, 12, T\\]"):
        tower(signal[:, :8])
    with pytest.raises(ValueError, match="n_samples=5000"):
        tower(signal[:, :, :2500])
    no_lead = leads_mask(STANDARD_LEADS)
    no_lead[1] = False
    with pytest.raises(ValueError, match="records \\[1\\] .* no lead present"):
        tower(signal, no_lead)
    with pytest.raises(ValueError, match="lead_mask must be bool"):
        tower(signal, torch.ones(BATCH, 12))


def test_float16_input_is_cast(tower, signal):
    half = signal.half()
    assert torch.equal(tower(half).pooled, tower(half.float()).pooled)


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_patch_tokens_are_on_a_par_with_the_positions_whatever_the_signal_scale(tower, signal, scale):
    """The patch LayerNorm: content tokens of norm sqrt(W) beside positions of norm sqrt(W / 2). Without
    it, centred min-max [0, 1] signals gave content ~16x smaller than the positions added to it."""
    content = tower.embed(scale * signal, leads_mask(STANDARD_LEADS)) - tower.position_embedding  # [B, N, W]
    width = CONFIG.width
    torch.testing.assert_close(
        content.norm(dim=-1), torch.full((BATCH, CONFIG.n_patches), width**0.5), rtol=0.02, atol=0
    )
    torch.testing.assert_close(
        tower.position_embedding.norm(dim=-1), torch.full((CONFIG.n_patches,), (width / 2) ** 0.5)
    )


def test_drop_leads():
    torch.manual_seed(0)
    tower = ECGTower(CONFIG)
    full = torch.ones(2000, CONFIG.n_leads, dtype=torch.bool)
    assert torch.equal(tower.eval().drop_leads(full), full)
    dropped = 1.0 - tower.train().drop_leads(full).float().mean().item()
    assert abs(dropped - CONFIG.lead_drop_prob) < 0.01

    greedy = ECGTower(replace(CONFIG, lead_drop_prob=0.9)).train()
    partial = torch.rand(2000, CONFIG.n_leads) < 0.3
    partial[:, 1] = True  # lead II always present
    after = greedy.drop_leads(partial)
    assert after.any(dim=1).all()  # never every lead of a record
    assert not (after & ~partial).any()  # only present leads drop
    only_ii = leads_mask(("II",), batch=100)
    assert torch.equal(greedy.drop_leads(only_ii), only_ii)


def test_training_forward_drops_leads(signal):
    torch.manual_seed(0)
    tower = ECGTower(CONFIG).train()
    assert not torch.equal(tower(signal).pooled, tower(signal).pooled)


def test_merl_vit_tiny_size():
    config = load_config("merl-vit-tiny").ecg
    tower = ECGTower(config)
    n_params = sum(p.numel() for p in tower.parameters())
    assert config.n_patches == 100 and len(tower.blocks) == 12 and config.width == 192
    assert 5.0e6 < n_params < 6.5e6  # 5,758,080: MERL's ViT-tiny backbone ≈ 5.46M plus the two poolers


@pytest.mark.parametrize("rhythm_pooling", ["query", "beat-mean"])
def test_tower_trains_and_gradients_reach_patch_projection(signal, rhythm_pooling):
    torch.manual_seed(0)
    tower = ECGTower(replace(CONFIG, lead_drop_prob=0.0, rhythm_pooling=rhythm_pooling)).train()
    head = torch.nn.Linear(CONFIG.width, 1)
    target = torch.tensor([[1.0], [-1.0], [0.5]])  # [B, 1]
    lead_mask = leads_mask(LIMB)
    optimizer = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=1e-3)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.mse_loss(head(tower(signal, lead_mask).pooled), target)
        optimizer.zero_grad()
        loss.backward()
        assert tower.patch_projection.weight.grad.abs().sum() > 0
        assert tower.absent_lead_embedding.grad[~lead_mask[0]].abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_attentional_pooler_ignores_padding():
    torch.manual_seed(0)
    pooler = AttentionalPooler(width=16, n_queries=3, heads=2)
    tokens = torch.randn(2, 5, 16)
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    out = pooler(tokens, padding)
    assert out.shape == (2, 3, 16)
    changed = tokens.clone()
    changed[1, 3:] = 50.0
    assert torch.allclose(pooler(changed, padding), out)


def test_attentional_pooler_attention_is_what_it_pools_with():
    torch.manual_seed(0)
    pooler = AttentionalPooler(width=16, n_queries=3, heads=2)
    tokens = torch.randn(2, 5, 16)
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    weights = pooler.attention(tokens, padding)
    assert weights.shape == (2, 3, 5)
    assert torch.allclose(weights.sum(dim=-1), torch.ones(2, 3))
    assert torch.all(weights[1, :, 3:] == 0)
    # one head per query: the pooled vector is out_proj of the weighted sum of the value projections
    single = AttentionalPooler(width=16, n_queries=3, heads=1)
    values = nn.functional.linear(single.ln_k(tokens), *_value_projection(single.attn))  # [2, 5, 16]
    expected = single.attn.out_proj(single.attention(tokens) @ values)
    assert torch.allclose(single(tokens), expected, atol=1e-6)


def _value_projection(attention: nn.MultiheadAttention) -> tuple[torch.Tensor, torch.Tensor]:
    width = attention.embed_dim
    return attention.in_proj_weight[2 * width :], attention.in_proj_bias[2 * width :]
