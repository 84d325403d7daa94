"""prefloop: align chat models in rounds on a Ray cluster.

The code lives in three layers, imported one way only:
``prefloop.app`` (CLI, recipes, the round loop) -> ``prefloop.actors`` (what runs inside Ray workers)
-> ``prefloop.core`` (pure logic: config, templates, selection, losses; no ray / vllm at import time).
"""

__version__ = "0.1.0"
