"""What runs a model on the device mesh: the Experiment (state, jitted train / eval / sample steps), sharding,
checkpoints, the metrics log, and drawing and writing samples. Modes, evals and the loop are built on it."""
