"""What an operator sees: logs with request ids, and Prometheus metrics."""
