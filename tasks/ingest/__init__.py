"""Stage 1, ingest: the day's landing files into a DuckDB snapshot, every row accounted for."""
