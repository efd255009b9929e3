"""Stage 3, train: what is due tonight, the snapshot exported for models_src, models and
baselines trained."""
