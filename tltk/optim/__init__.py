"""Optimisation: learning-rate schedules and per-block (discriminative) rates."""
