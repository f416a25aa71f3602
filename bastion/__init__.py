"""Bastion: a secure, fast gateway in front of vLLM and other OpenAI-compatible servers."""

__version__ = "0.1.0"

__all__ = ["__version__"]
