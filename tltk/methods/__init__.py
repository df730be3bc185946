"""Methods from the literature: tuning, sweeps, unfreezing schedules, the LR finder,
transferability scores and the Full Original baseline."""
