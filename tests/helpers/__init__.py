"""What the tests (and the benchmarks in bench/) share: no tests here, and no fixtures.

Fixtures live in the conftest files; a test module imports helpers from this package, never
from another test module or a conftest.
"""
