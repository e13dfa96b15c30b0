"""Benchmarks of the decision engine and of the campaign lint path.

Run ``python -m bench`` (both), ``python -m bench.decide`` or ``python -m bench.lint``
from the project root. Every input is generated from a fixed seed, so two runs on the
same machine measure the same work; see ``docs/benchmarks.md``. Nothing here asserts on
time: the figures are printed next to their targets for a person to read.
"""
