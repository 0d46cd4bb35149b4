"""Training one run: its config, the engine loop and its pieces (budget, selection, checkpoints, callbacks, progress, evaluation), inference on a trained model, tracking and model cards."""
