"""CLI: python -m pipelines.synthetic --n N --output DIR [--seed S] [--config FILE.json]"""

from __future__ import annotations

import argparse
import dataclasses
import time

from pipelines.synthetic.conditions import SyntheticConfig
from pipelines.synthetic.ptbxl_layout import generate_ptbxl_layout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.synthetic",
        description="Write labelled synthetic 12-lead ECGs in PTB-XL's layout (WFDB records + CSV tables).",
    )
    parser.add_argument("--n", type=int, help="number of ECGs to write (default: the config's n)")
    parser.add_argument("--output", required=True, help="directory to write ptbxl_database.csv and records500/ into")
    parser.add_argument("--seed", type=int, help="seed; the same seed writes the same data (default: the config's)")
    parser.add_argument("--config", help="JSON file of SyntheticConfig fields; fields it omits keep their defaults")
    args = parser.parse_args(argv)

    config = SyntheticConfig.from_json(args.config) if args.config else SyntheticConfig()
    overrides = {key: value for key, value in (("n", args.n), ("seed", args.seed)) if value is not None}
    config = dataclasses.replace(config, **overrides)
    start = time.perf_counter()
    generate_ptbxl_layout(args.output, config)
    seconds = time.perf_counter() - start
    print(f"{config.n} records in {seconds:.1f} s ({config.n / seconds:.0f} records/s) -> {args.output}")


if __name__ == "__main__":
    main()
