"""The HTTP server layer: protocol limits and the process entry point."""
