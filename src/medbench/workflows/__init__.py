"""Many runs at once: the benchmark grid and its workers, tuning, architecture search (nas), ensembles, transfer and the MedMNIST+ protocol."""
