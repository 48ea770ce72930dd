"""Importers for published weights (explicit key maps) into muse_jax checkpoints."""
