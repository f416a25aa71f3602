"""Phase ``authorize``: may this identity use this route, this model, from this address?

Deny unless the caller's role (narrowed by its credential) allows it. Refusals are generic:
a 403 never says what the caller could have had. A control route the caller may not use
answers 404, like a path the gateway does not serve.
"""

from __future__ import annotations

from bastion.errors import NotFoundError, PermissionDeniedError
from bastion.pipeline.context import RequestContext
from bastion.pipeline.endpoints import EndpointKind
from bastion.pipeline.fields import FieldPolicy
from bastion.policy.policy import Policy

__all__ = ["Authorize"]


class Authorize:
    def __init__(self, policy: Policy, fields: FieldPolicy | None = None) -> None:
        self._policy = policy
        self._fields = fields

    def network(self, ctx: RequestContext) -> None:
        """The gateway-wide network rule, before anything else is looked at."""
        ctx.address = self._policy.address(ctx.client_host, ctx.forwarded_for)
        if not self._policy.admits(ctx.address):
            raise PermissionDeniedError()

    def __call__(self, ctx: RequestContext) -> None:
        assert ctx.endpoint is not None and ctx.identity is not None
        access = self._policy.access(ctx.identity)
        ctx.access = access
        endpoint = ctx.endpoint
        if access is None or not (
            access.allows_route(endpoint.permission)
            or (endpoint.also is not None and access.allows_route(endpoint.also))
        ):
            if endpoint.kind is EndpointKind.CONTROL:
                raise NotFoundError()
            raise PermissionDeniedError()
        if not access.allows_address(ctx.address):
            raise PermissionDeniedError()

    @staticmethod
    def model(ctx: RequestContext, name: str) -> None:
        """After routing: may the caller use this model?"""
        if ctx.access is None or not ctx.access.allows_model(name):
            raise PermissionDeniedError("You are not allowed to use this model.", param="model")

    def body(self, ctx: RequestContext) -> None:
        """After the body is read: may the caller send these fields? (see :mod:`.fields`)"""
        if self._fields is None or ctx.json is None:
            return
        assert ctx.identity is not None
        overrides = self._fields.check(ctx.json, ctx.identity, ctx.body)
        if overrides:
            ctx.override(overrides)
