"""Grading a micro-batch (claim, decode, infer, record) and drawing its heat maps."""
