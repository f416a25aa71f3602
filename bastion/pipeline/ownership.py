"""Part of phases ``authorize`` and ``route``: a stored response is its creator's alone.

vLLM keeps created responses (``store``, the default) in the memory of the process that
made them and serves them to anyone who names the id: ``GET /v1/responses/{id}`` reads or
replays one, ``.../cancel`` cancels it, and a create's ``previous_response_id`` pulls one's
conversation into a new prompt. The gateway closes that:

- a create's answer is watched for the new response's id (:mod:`.created`), and its owner
  (principal, model, upstream) remembered (:mod:`bastion.store.owners`);
- a request that names a response (by path, or by ``previous_response_id``) goes through only
  for the principal that created it, administrators included in "everyone else": anyone
  else, and any unknown id, gets 404 and nothing is forwarded;
- it goes to the upstream that keeps the response, never through the balancer: 404 if that
  upstream no longer serves the model, 503 (``no_healthy_upstream``) while it is down or
  ejected;
- a create may not name the response id itself (``request_id``, whatever ``fields.allow``
  says), so it cannot overwrite a response someone else stored under that id.
"""

from __future__ import annotations

from bastion.errors import BadRequestError, NotFoundError
from bastion.pipeline.context import RequestContext
from bastion.pipeline.created import CreatedResponse
from bastion.pipeline.endpoints import RESOURCE_ID
from bastion.pipeline.route import ModelEntry, ModelRegistry
from bastion.store.owners import NOBODY, ResponseOwner, ResponseOwners
from bastion.upstream.balancer import Weighted

__all__ = ["Ownership"]

_PREVIOUS = "previous_response_id"


class Ownership:
    """Checks and routes requests that name a stored response; watches creates."""

    def __init__(self, owners: ResponseOwners, models: ModelRegistry, max_event_bytes: int) -> None:
        self._owners = owners
        self._models = models
        self._max_event_bytes = max_event_bytes

    async def stored(self, ctx: RequestContext) -> ModelEntry:
        """A request on a stored response's path: the caller must own it. Returns the
        response's model; the upstream that keeps it is pinned (``ctx.pinned``)."""
        assert ctx.endpoint is not None and ctx.endpoint.resource is not None
        owner = await self._owned(ctx, ctx.endpoint.resource, None)
        entry = self._models.entry(owner.model)
        if entry is None:  # the model is no longer served: neither is the response
            raise NotFoundError("No response with this id.")
        ctx.model = entry.name
        ctx.pinned = _keeper(entry, owner)
        return entry

    async def create(self, ctx: RequestContext, entry: ModelEntry) -> None:
        """``POST /v1/responses``, after its body is authorized: a ``previous_response_id``
        must be the caller's own (and pins its upstream); the answer is watched for the id."""
        body = ctx.json
        assert body is not None and ctx.identity is not None
        if "request_id" in body:
            raise BadRequestError(
                "The field 'request_id' is not accepted by this gateway.",
                param="request_id",
                code="field_not_allowed",
            )
        previous = body.get(_PREVIOUS)
        if previous is not None:
            if not isinstance(previous, str):
                raise BadRequestError(
                    f"'{_PREVIOUS}' must be a string.", param=_PREVIOUS, code="invalid_type"
                )
            ctx.pinned = _keeper(entry, await self._owned(ctx, previous, _PREVIOUS))
        if body.get("store") is not False:
            ctx.created = CreatedResponse(
                self._owners, ctx.identity.principal, entry.name, self._max_event_bytes
            )

    async def _owned(
        self, ctx: RequestContext, response_id: str, param: str | None
    ) -> ResponseOwner:
        """The owner of ``response_id`` if it is the caller; 404 for anyone else and for an
        unknown id alike, so that a refusal does not even say the id exists."""
        assert ctx.identity is not None
        principal = ctx.identity.principal
        owner = None
        if RESOURCE_ID.fullmatch(response_id) and principal != NOBODY:
            owner = await self._owners.owner(response_id)
        if owner is None or owner.principal != principal:
            raise NotFoundError("No response with this id.", param=param)
        return owner


def _keeper(entry: ModelEntry, owner: ResponseOwner) -> Weighted:
    """The member of the model's upstreams that keeps the response."""
    for member in entry.balancer.members:
        if member.upstream.name == owner.upstream:
            return member
    raise NotFoundError("The response is no longer available for this model.")
