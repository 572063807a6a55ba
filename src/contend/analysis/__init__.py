"""Pure functions from collected data to metrics, verdicts and comparisons. No kernel access."""
