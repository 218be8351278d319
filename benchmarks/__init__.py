"""Benchmarks of the zoo against torchvision; run `python -m benchmarks.run` (see README.md)."""
