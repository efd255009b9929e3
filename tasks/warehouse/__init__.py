"""The DuckDB warehouse every stage shares: its tables and the connection helper (`schema.py`),
and what it holds as text for `encore status` (`status.py`). Each stage's own queries live in
its package (tasks/<stage>/); none of this imports Prefect, so tests and benchmarks call it
directly."""
