"""Bastion: a secure, fast gateway in front of vLLM and other OpenAI-compatible servers."""

import bastion.build as _build

__version__ = "0.1.0"

__all__ = ["__version__"]

# Compiled modules or their sources: decided before any other module of the package loads.
_build.select()
