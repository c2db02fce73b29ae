"""Measuring a trained model through a cache policy (fourth room).

Owns the grid of tasks x lengths x depths (``evaluate``), the decode protocol (``decode``), shared-prefix
questions (``prefix``), and the other ``eval.kind`` evaluations (``eval_kinds``: ``lm_eval``,
``longbench_eval``, ``attention_probe``); each writes rows through ``pipeline.results``. Their config
dataclasses live in ``pipeline/config/eval_config.py``. May import ``pipeline.config``,
``pipeline.results``, ``pipeline.train``, models/, tasks/ and registries/.
"""
