"""MELP stage 1: continued masked-LM pretraining of the text tower on report text, on the same Ray Train +
DeepSpeed machinery as `pipelines.pretrain` (only the `report` column is read).

    python -m pipelines.pretrain_lm --data data/mimic --output runs/cardio-lm --config melp-base
    python -m pipelines.pretrain --data data/mimic --output runs/melp --config melp-base \\
        text.name_or_path=runs/cardio-lm/export/text-encoder

The trained encoder lands in `RUN_DIR/export/text-encoder/` as a Hugging Face folder; stage 2 names it
as its text tower. Same flags and `section.field=value` overrides as `pipelines.pretrain`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipelines.pretrain import build_parser, print_summary, resolve, run
from pipelines.training.launch import EXPORT_DIR, TEXT_ENCODER_DIR

OBJECTIVE = "melp-lm"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(__doc__, objectives=(OBJECTIVE,))
    args = parser.parse_args(argv)
    try:
        model_config, train_config = resolve(args, objective=OBJECTIVE)
    except ValueError as error:
        parser.error(str(error))
    print_summary(run(parser, args, model_config, train_config))
    print(f"text encoder: {args.output}/{EXPORT_DIR}/{TEXT_ENCODER_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
