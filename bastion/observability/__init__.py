"""Observability: Prometheus metrics (what is counted, the registry, the separate port), the
services' own counters read at scrape time, and the access log. The audit trail is the
store's (:mod:`bastion.store.audit`)."""
