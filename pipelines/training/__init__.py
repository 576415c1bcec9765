"""Ray Train × DeepSpeed: the pretraining driver (launch.py), the worker loop (worker.py), the one
TorchTrainer builder (trainer.py), configs and overrides, data, validation, checkpoints and export."""
