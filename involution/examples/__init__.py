"""Runnable examples: ``python -m involution.examples.digits``."""
