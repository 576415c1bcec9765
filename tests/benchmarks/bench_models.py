"""Models benchmark: parameters and training throughput per named config and objective.

    python -m tests.benchmarks.bench_models                         # all named configs
    python -m tests.benchmarks.bench_models --configs tiny merl-vit-tiny --batch-size 8 --seconds 10

For each config: (1) the ECG tower against a bare PyTorch ViT-1D of the same shape (Conv1d patch
embedding, nn.TransformerEncoder, mean pool), forward + backward on the same batch, measured
alternately so machine noise hits both alike; (2) the whole model under each objective, forward +
backward + AdamW step on synthetic ECGs with their reports. Samples/s, best of the timed steps.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from models.config import available_configs, load_config
from models.ecg_tower import ECGTower
from models.factory import create_model
from pipelines.synthetic import SyntheticConfig, generate_batch

OBJECTIVES = ("melp", "cmelt", "mets")


class BareViT1D(nn.Module):
    """The reference: the same width, depth, heads and patching in plain PyTorch, nothing else."""

    def __init__(
        self, leads: int, samples: int, patch: int, width: int, depth: int, heads: int, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv1d(leads, width, kernel_size=patch, stride=patch)
        self.position = nn.Parameter(torch.zeros(1, samples // patch, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, int(mlp_ratio * width), dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embedding(signal).transpose(1, 2) + self.position  # [B, N, W]
        return self.norm(self.encoder(tokens)).mean(dim=1)  # [B, W]


def samples_per_second(step, batch_size: int, seconds: float) -> float:
    """Best single-step rate over `seconds` of repeated steps, after one warm-up step."""
    step()
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return batch_size / best


def parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def tower_against_reference(config_name: str, batch_size: int, seconds: float) -> tuple[float, float]:
    config = load_config(config_name).ecg
    tower = ECGTower(config).train()
    bare = BareViT1D(
        config.n_leads, config.n_samples, config.patch_size, config.width, config.depth, config.heads, config.mlp_ratio
    ).train()
    signal = torch.rand(batch_size, config.n_leads, config.n_samples)
    lead_mask = torch.ones(batch_size, config.n_leads, dtype=torch.bool)

    def tower_step() -> None:
        tower.zero_grad()
        tower(signal, lead_mask).pooled.square().mean().backward()

    def bare_step() -> None:
        bare.zero_grad()
        bare(signal).square().mean().backward()

    rates = {"tower": [], "bare": []}
    for _ in range(2):  # alternate, so noise on the shared machine hits both
        rates["tower"].append(samples_per_second(tower_step, batch_size, seconds / 4))
        rates["bare"].append(samples_per_second(bare_step, batch_size, seconds / 4))
    return max(rates["tower"]), max(rates["bare"])


def model_throughput(config_name: str, objective: str, batch, seconds: float) -> dict | None:
    try:
        model, _ = create_model(config_name, objective=objective)
    except NotImplementedError:
        return None
    model.train()
    collated = model.collate(*batch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss = model(collated)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return {
        "ecg": parameters(model.ecg),
        "text": parameters(model.text),
        "objective": parameters(model.objective) + parameters(model.ecg_projection) + parameters(model.text_projection),
        "trainable": parameters(model, trainable_only=True),
        "samples_per_s": samples_per_second(step, len(batch[2]), seconds),
    }


def synthetic_batch(batch_size: int):
    from pipelines.data.leads import STANDARD_LEADS
    from pipelines.data.preprocess import PreprocessConfig, preprocess
    from pipelines.data.wfdb_io import Recording

    signals, metadata = generate_batch(batch_size, np.random.default_rng(0), SyntheticConfig(n=batch_size))
    prepared = [preprocess(Recording("b", s, 500, list(STANDARD_LEADS)), PreprocessConfig()) for s in signals]
    return (
        np.stack([p.signal for p in prepared]),
        np.stack([p.lead_mask for p in prepared]),
        [m["report"] for m in metadata],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", default=available_configs())
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0, help="timing budget per measurement")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = synthetic_batch(args.batch_size)
    print(
        f"\n### ECG tower vs bare PyTorch ViT-1D (forward + backward, batch {args.batch_size}, {args.threads} threads)\n"
    )
    print("| config | tower samples/s | bare samples/s | tower / bare |")
    print("| --- | ---: | ---: | ---: |")
    for name in args.configs:
        tower, bare = tower_against_reference(name, args.batch_size, args.seconds)
        print(f"| {name} | {tower:,.1f} | {bare:,.1f} | {tower / bare:.2f}x |", flush=True)
    print(f"\n### Whole model per objective (forward + backward + AdamW step, batch {args.batch_size})\n")
    print(
        "| config | objective | ECG tower params | text tower params | objective + projections | trainable | samples/s |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name in args.configs:
        for objective in OBJECTIVES:
            figures = model_throughput(name, objective, batch, args.seconds)
            if figures is None:
                print(f"| {name} | {objective} | not built yet | | | | |", flush=True)
                continue
            print(
                f"| {name} | {objective} | {figures['ecg'] / 1e6:.2f}M | {figures['text'] / 1e6:.2f}M | "
                f"{figures['objective'] / 1e6:.2f}M | {figures['trainable'] / 1e6:.2f}M | "
                f"{figures['samples_per_s']:,.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
