"""Numbers from labels and scores: the official MedMNIST metrics, calibration, the bootstrap and the statistical tests. No runs, no files of runs."""
