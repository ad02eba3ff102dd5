"""What an operator sees: status, Prometheus metrics, the metrics view."""
