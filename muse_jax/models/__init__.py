"""Flax linen models: transformer layers, the base and super-res transformers, tokenizers, T5."""
