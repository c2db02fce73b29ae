"""Training and evaluation: LightningModule, evaluation grid, memory probes, results rows."""
