"""From a composed Hydra config to validated, typed objects, before any data or step (first room).

Owns every section's dataclass and its checks (``schema``, ``sections``, ``eval_config``, ``task_config``,
``trainer_config``, ``threads``), the cross-section checks (``model_checks``), the stage protocol and its
registry (``stage``: a stage is chosen and checked here; its variants live in ``pipeline/train/stages/``),
the config hash, the OmegaConf resolvers, and ``resolve`` (``validate`` -> ``Resolved``). May import
models/, tasks/, registries/ and nothing else of pipeline/.
"""
