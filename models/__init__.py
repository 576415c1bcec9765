"""ECG and text towers with the MELP, C-MELT and METS objectives (the next issue builds them)."""
