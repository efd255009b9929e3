import models_src  # noqa: F401 - first: it sets torch's allocator options before torch loads
