"""Shared by the chart tests: the `helm` binary fixture lives in test_chart.py."""

from test_chart import helm  # noqa: F401
