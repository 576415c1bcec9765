"""Ray Tune sweeps over temperature, masking ratios and loss weights: `python -m tune.sweep`."""
