"""Stage 5, gate: tonight's challenger, baselines and champion evaluated; the verdict recorded."""
