"""Offline tools over finished runs (report, re-evaluation); they need neither Flower nor Ray."""
