"""Persistence: users, teams, API keys, the audit trail and usage records (SQLite or
PostgreSQL)."""
