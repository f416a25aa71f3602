"""Talking to model servers: the pooled HTTP/1.1 client (:mod:`bastion.upstream.client`)."""
