"""Who may do what: roles, their permissions on routes and models, and network rules."""
