"""Converters of bundled pretrained checkpoints."""
