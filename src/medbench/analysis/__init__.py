"""Studies of finished runs: paired comparisons, robustness to corruptions, explanations, the official MedMNIST result files and what a grid adds after its runs."""
