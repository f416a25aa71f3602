"""Observability: metrics, access log and audit."""
