"""A real DeepSpeed engine in one process (gloo, world size 1, no Ray), for tests that need a genuine
checkpoint or a real resume; a subprocess, so that no process group or DeepSpeed state stays in pytest's.

    python tests/single_rank_deepspeed.py --zero-stage 2 --save DIR --resume A DIR

The model is the tiny METS model in fp32 on the CPU (gloo), or with `--cuda` in bf16 on the first GPU (nccl).
`--save`: one optimizer step, printed as `{"step": 1, "loss": …, "device": …, "dtype": …, "backend": …}`, then a
checkpoint into DIR.
Then `--resume` loads each folder in turn with the training loop's own `load_training_state` and prints
one JSON line per folder: `{"folder": …, "state": {"step": …, "epoch": …}}` or `{"folder": …, "error": …}`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from dataclasses import asdict


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--zero-stage", type=int, required=True)
    parser.add_argument("--save")
    parser.add_argument("--resume", nargs="*", default=[])
    parser.add_argument("--cuda", action="store_true", help="bf16 on the first GPU, nccl (default: fp32, CPU, gloo)")
    args = parser.parse_args()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")

    import torch
    import torch.distributed as dist

    from models.factory import resolve_config
    from models.model import ECGTextModel
    from pipelines.training.checkpoints import TAG, TrainingState, load_training_state
    from pipelines.training.config import TrainConfig
    from pipelines.training.data import collate_batch
    from pipelines.training.engine import DTYPES, initialize_engine

    device, precision, backend = ("cuda:0", "bf16", "nccl") if args.cuda else ("cpu", "fp32", "gloo")
    dist.init_process_group(backend, device_id=torch.device(device) if args.cuda else None)
    torch.manual_seed(0)
    model = ECGTextModel(resolve_config("tiny", "mets")).to(device)
    train = TrainConfig(workers=1, batch_size=2, zero_stage=args.zero_stage, warmup_steps=1)
    engine, _ = initialize_engine(model, train, 4, precision, model.parameters_used_outside_their_module())
    if args.save:
        columns = {"signal": torch.randn(2, 12, 5000), "lead_mask": torch.ones(2, 12, dtype=torch.bool)}
        batch = collate_batch(model, columns | {"report": ["sinus rhythm", "afib"]}, DTYPES[precision], device)
        loss = engine(batch)["loss"]
        engine.backward(loss)
        engine.step()
        dtype = str(next(engine.module.parameters()).dtype)
        step = {"step": engine.global_steps, "loss": loss.item(), "device": str(loss.device), "dtype": dtype}
        print(json.dumps(step | {"backend": dist.get_backend()}), flush=True)
        state = TrainingState(step=engine.global_steps, epoch=0)
        engine.save_checkpoint(args.save, tag=TAG, client_state={"training_state": asdict(state)})
    for folder in args.resume:
        try:
            print(json.dumps({"folder": folder, "state": asdict(load_training_state(engine, folder))}), flush=True)
        except ValueError as error:
            print(json.dumps({"folder": folder, "error": str(error)}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
