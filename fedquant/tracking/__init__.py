"""Reporting: console progress, results files, plots, the atomic writer and the W&B adapter."""

from .console import ConsoleReporter

__all__ = ["ConsoleReporter"]
