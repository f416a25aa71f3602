"""Phase ``route``: which upstream serves this request? Decided by the requested model."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from bastion.errors import BadRequestError, ModelNotFoundError
from bastion.pipeline.context import RequestContext
from bastion.settings import ModelSettings, Secret
from bastion.upstream.origin import Origin

__all__ = ["ModelRegistry", "Target"]


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream base URL of a model, with the credential the gateway adds for it."""

    origin: Origin
    name: str
    """Display name for logs: ``host:port``, never a credential."""
    authorization: bytes | None
    send_request_id: bool = True


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    upstream_model: str | None
    targets: tuple[Target, ...]
    _turns: Iterator[Target]

    def next_target(self) -> Target:
        return next(self._turns)


def _bearer(secret: Secret | None) -> bytes | None:
    return None if secret is None else b"Bearer " + secret.resolve().encode()


class ModelRegistry:
    """The models the gateway serves, each with its upstreams (taken in turn)."""

    def __init__(self, models: tuple[ModelSettings, ...]) -> None:
        """Upstream API keys are resolved here, once (a missing secret is a ConfigError)."""
        self._models: dict[str, ModelEntry] = {}
        for model in models:
            targets = tuple(
                Target(
                    origin=(origin := Origin.from_url(u.url)),
                    name=origin.host_header.decode(),
                    authorization=_bearer(u.api_key),
                    send_request_id=u.send_request_id,
                )
                for u in model.upstreams
            )
            self._models[model.name] = ModelEntry(
                model.name, model.upstream_model, targets, itertools.cycle(targets)
            )
        self._only = next(iter(self._models.values())) if len(self._models) == 1 else None

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def entries(self) -> list[ModelEntry]:
        return list(self._models.values())

    def resolve(self, ctx: RequestContext) -> ModelEntry:
        """The model entry for the request; a request naming no model gets the only model."""
        if ctx.model is None:
            if self._only is None:
                raise BadRequestError("'model' is required.", param="model")
            ctx.model = self._only.name
            return self._only
        entry = self._models.get(ctx.model)
        if entry is None:
            ctx.model = None  # caller-chosen text: kept out of the logs
            raise ModelNotFoundError(param="model")
        return entry
