"""A run from the command line down: modes (train, eval, sample, prepare, params), the training loop, the
workdir, config validation, sweeps, multi-host start-up and the process's start-up checks."""
