"""Research tools: sweeps, plots, benchmark suites, data statistics, bench helpers."""
