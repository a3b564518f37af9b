"""The training stage, one module per job; ``recsys_core.stages.train`` is its front door."""
