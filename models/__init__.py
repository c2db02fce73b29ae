"""nn.Modules only: no Lightning, no Hydra, no tasks."""
