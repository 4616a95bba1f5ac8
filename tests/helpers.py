"""Shared test constants."""

# The smallest FusionMamba that keeps every module: fast enough for unit tests.
TINY = dict(dims=[8, 16, 32, 64], dims_decoder=[64, 32, 16, 8], depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1])
