"""Talking to model servers: the pooled HTTP/1.1 client, the balancer and per-upstream state,
active health checks, and the managed engine (llama.cpp or vLLM)."""
