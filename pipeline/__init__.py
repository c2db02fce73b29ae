"""The run, in the order it happens: config -> train -> evaluation -> rows (see docs/architecture.md).

Rooms, in import order (a room imports only the rooms before it, TYPE_CHECKING imports included;
tests/test_import_graph.py enforces it): ``config/`` (a Hydra config to a validated ``Resolved``),
``results/`` (the row format every later room writes, and the tables read from rows), ``train/`` (fit a
stage's LightningModule, checkpoints, the run directory), ``evaluation/`` (the grid and the other eval
kinds through a cache policy). On top, the three entry points train.py and eval.py call: ``run.py``
(train, then evaluate), ``eval_run.py`` (evaluate a checkpoint) and ``failures.py`` (a failed job's row).
"""
