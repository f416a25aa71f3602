"""Credentials in, identities out."""
