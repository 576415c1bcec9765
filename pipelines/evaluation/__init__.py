"""Evaluation of pretrained ECG-text models: label tables that turn codes into zero-shot classes, and
AUROC metrics shared by validation during pretraining and the `pipelines.evaluate` command."""
