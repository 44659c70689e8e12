"""Base layer: station config and its loaders, device maps, tariffs, the clock, certificates.

Everything else may import it; it imports nothing of flexcharge's own above it.
"""
