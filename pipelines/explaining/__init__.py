"""What explains a score, shared by evaluation, serving and batch scoring: the evidence body and the ECG-paper figure."""
