"""Renderers: pure functions from results to text, JSON, ...; they never touch the kernel."""
