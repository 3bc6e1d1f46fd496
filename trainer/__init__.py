"""The driver: Hydra config tree, dataset -> batches, worker groups, the fit loop, checkpoints, tracking."""
