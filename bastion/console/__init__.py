"""The web console under ``/ui/``: static pages, sessions, sign-in with a key or OIDC.

The pages themselves (``static/``) hold no data; everything they show comes from the admin
API, which accepts a console session (its cookie and its CSRF token) in place of an
``Authorization`` header. See docs/admin.md.
"""
