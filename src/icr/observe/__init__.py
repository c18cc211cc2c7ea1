"""Readers of a run: report, plots, plan, status."""
