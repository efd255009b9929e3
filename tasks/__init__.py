"""The night's stages as Prefect tasks, one package per stage (README, Layout), over the
shared DuckDB warehouse (`tasks/warehouse/`). Each stage package holds its Prefect tasks
(`tasks.py`) beside the Prefect-free code they wrap."""

import models_src  # noqa: F401 - first: it sets torch's allocator options before torch loads
