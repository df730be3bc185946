"""tltk benchmarks, run by hand: `python -m benchmarks.<name> [--quick]`."""
