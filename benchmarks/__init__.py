"""Benchmark harness for async-backup (issue 5): servers, data sets, contenders, measurement, report.

Run it with ``python -m benchmarks --help`` from the repository root. Nothing in here is imported by
the ``async_backup`` package, and the package is only ever run as a subprocess.
"""
