"""Super-resolution app: CFSR with the official checkpoints, literature-exact evaluation, tiled inference."""
