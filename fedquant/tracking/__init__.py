"""Reporting: console, results files, plots and W&B (only the composition root uses these)."""

from .console import ConsoleReporter

__all__ = ["ConsoleReporter"]
