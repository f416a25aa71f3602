"""The request pipeline: a context object and one module per phase.

Phases, in order: ``accept`` (with the ``endpoints`` table and ``multipart`` parsing),
``authenticate``, ``authorize``, ``admit``, ``route``, ``forward``, ``account``.
``gateway`` runs them; ``context`` holds one request's facts; ``responses`` writes the
responses the gateway makes itself.
"""
