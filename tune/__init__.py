"""Ray Tune sweeps over temperature, masking ratios and loss weights (a later issue builds them)."""
