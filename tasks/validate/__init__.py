"""Stage 2, validate: the snapshot against the expectations; a failure stops only its dataset."""
