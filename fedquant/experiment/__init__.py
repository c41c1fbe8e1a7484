"""One experiment, independent of how it is run: its config (checked), the specs every process
rebuilds data and model from, what happens after each round, and the run's history."""
