"""Stage 6, refit: a new champion's configuration retrained on all of the snapshot, checked and
registered as the version that serves."""
