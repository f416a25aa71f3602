"""Phase ``authorize``: may this identity use this route? Deny unless a rule allows it."""

from __future__ import annotations

from bastion.errors import NotFoundError
from bastion.pipeline.context import RequestContext
from bastion.pipeline.routes import RouteKind
from bastion.settings import RoutesSettings

__all__ = ["Authorize"]


class Authorize:
    """Route-level rules. Control routes exist only for administrators, and only when enabled.

    A refused control route answers 404, exactly like a path the gateway does not serve, so
    a caller learns nothing about which control routes exist or are enabled.
    """

    def __init__(self, settings: RoutesSettings) -> None:
        self._control_for_admins = settings.control == "admin"

    def __call__(self, ctx: RequestContext) -> None:
        assert ctx.route is not None and ctx.identity is not None
        if ctx.route.kind is RouteKind.CONTROL and not (
            self._control_for_admins and ctx.identity.is_admin
        ):
            raise NotFoundError()
