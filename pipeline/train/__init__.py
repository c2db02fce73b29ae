"""Fitting a model: one stage's LightningModule under a Lightning Trainer (third room).

Owns the fit loop (``fit``: data, Trainer, resume, ``fit_stage``), the LightningModule of a language
model (``module``), the stages (``stages/``), checkpoints and the run directory's lock and record
(``checkpoint``, ``run_state``, ``interrupt``), building the starting model (``base_model``, ``hf_init``)
and training costs and memory measurement (``costs``, ``memory``). May import ``pipeline.config``,
``pipeline.results``, models/, tasks/ and registries/.
"""
