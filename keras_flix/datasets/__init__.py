"""Datasets bundled with keras-flix."""
