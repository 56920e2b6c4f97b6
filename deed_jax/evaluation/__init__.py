"""Evaluation of multi-exit models."""
