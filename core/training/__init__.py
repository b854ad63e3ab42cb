"""Training: the settled configuration, the one loop, the solvers, step strategies and update
rules."""
