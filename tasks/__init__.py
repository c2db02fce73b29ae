"""The synthetic long-context task suite: seeded numpy generators that know nothing of models."""
