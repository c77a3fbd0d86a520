"""Evaluation: benchmark loaders, metrics, the eval CLI and the performance benchmark."""
