"""Flax nnx: being split out of adapters/flax.py."""

from unitree.adapters.flax import adapter

__all__ = ["adapter"]
