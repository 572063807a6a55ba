"""The demo system: app, noise, load, cgroup sandbox and the experiment runner."""
