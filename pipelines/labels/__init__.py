"""The label vocabulary: class tables, tasks (classes, raw-code mappings, prompts), zero-shot scoring of a
task and AUROC metrics. Shared by validation during pretraining, evaluation, the Serve app and batch
scoring; it imports only `models` (see the import contracts in pyproject.toml).

table_files.py (the shipped tables/*.json) · classes.py (the synthetic label table, report templates,
present_classes) · tasks.py (Task, load_task) · zero_shot.py (a task's classifier and scores) · metrics.py ·
mentions.py (the task classes a report text names).
"""
