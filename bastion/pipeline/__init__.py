"""The request pipeline: a context object and one module per phase."""
