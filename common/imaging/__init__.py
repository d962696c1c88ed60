"""Photographs as pixels: decoding untrusted bytes, finding the retina, gradability, model input.

Everything here is numpy and Pillow, never TensorFlow, so the quality tooling and tests
run without a model. :func:`common.imaging.prepare.prepare_image` is the one path from
bytes to what a model is fed.
"""
