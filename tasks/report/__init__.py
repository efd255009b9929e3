"""Stage 8, report: the night's run report, as a file in the data home and as Prefect artifacts."""
