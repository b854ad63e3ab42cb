"""What every script shares: one-line errors, atomic writes and locks, torchrun, memory checks."""
