"""Prometheus exposition: the collectors over the daemon's state, and the HTTP server."""
