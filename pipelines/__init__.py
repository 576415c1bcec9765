"""The stages of the flow, each a `python -m pipelines.<stage>` entry point that runs on Ray."""
