"""The one train loop, its state and optimizers."""
