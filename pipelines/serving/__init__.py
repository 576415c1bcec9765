"""Online and batch scoring: request parsing and the shared zero-shot scorer."""
