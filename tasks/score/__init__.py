"""Stage 7, score: the champion's ONNX scorer over every user into DuckDB and Parquet; `encore
recommend` and `encore predict`."""
