"""The operations plane: health, readiness, Prometheus metrics, status and controls."""
