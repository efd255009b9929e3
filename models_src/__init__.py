"""Pure ML for Encore: sample data, graphs, splits, models, metrics, trainers.

This package never imports prefect, duckdb or great_expectations (see DESIGN.md's layer rule).
"""
