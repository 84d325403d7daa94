"""The tiny world of prefloop's offline demo: a fixture generator, not part of the application.

A synthetic world of topics (``topics``), its gold preference (``gold``), the tiny models built from it
(``assets``: a tokenizer and policy in ``policy``, a PairRM and a reward model in ``judges``, the judges
trained on noisy labels of the gold preference) and a small offline preference file (``offline_data``).
The application only calls ``assets.build_assets`` (for ``assets: tiny`` recipes) and reads ``DATA_DIR``
(the ``{data}`` placeholder); the demo recipe's eval judge is ``gold.gold_score``.

It shares the project's chat templates (``core.templates``), PairRM marker tokens
(``actors.blender_compat.RANKER_MARKERS``) and learning-rate schedule (``core.train_config.lr_factor``).
"""
