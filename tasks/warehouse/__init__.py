"""The DuckDB warehouse: schema, ingest, validation and status queries (no Prefect here).

Prefect tasks in `tasks/*.py` wrap these functions; keeping them Prefect-free lets the tests and
the benchmark call them directly.
"""
