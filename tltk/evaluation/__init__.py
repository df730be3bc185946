"""Evaluation and reports: metrics, analysis, reports, plots, predict, ensemble and export."""
