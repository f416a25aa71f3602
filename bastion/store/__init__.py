"""The identity store: users, teams, API keys and the audit trail (SQLite or PostgreSQL)."""
