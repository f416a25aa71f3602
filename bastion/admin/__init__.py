"""Administration: the rules (service), the HTTP API, the CLI and its remote client."""
