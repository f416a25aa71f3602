"""Phase ``route``: which upstream serves this request? Decided by the requested model.

The registry maps each served model to the balancer over its upstreams. ``authorize`` asks
it first whether the requested model is served at all (404 if not, before any limit is
counted); ``forward`` then asks the model's balancer for an upstream, and for another one
if an attempt fails before the response began.
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion.errors import BadRequestError, ModelNotFoundError
from bastion.pipeline.context import RequestContext
from bastion.settings import ModelSettings, Secret
from bastion.upstream.balancer import Balancer, UpstreamSet, Weighted
from bastion.upstream.origin import Origin

__all__ = ["ModelEntry", "ModelRegistry"]


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    upstream_model: str | None
    balancer: Balancer


def _bearer(secret: Secret | None) -> bytes | None:
    return None if secret is None else b"Bearer " + secret.resolve().encode()


class ModelRegistry:
    """The models the gateway serves, each with the balancer over its upstreams."""

    def __init__(
        self, models: tuple[ModelSettings, ...], upstreams: UpstreamSet, health_path: str
    ) -> None:
        """Upstream API keys are resolved here, once (a missing secret is a ConfigError).
        Upstreams come from ``upstreams``, which keeps their state across reloads."""
        self._models: dict[str, ModelEntry] = {}
        for model in models:
            members = []
            for target in model.upstreams:
                origin = Origin.from_url(target.url)
                authorization = _bearer(target.api_key)
                upstream = upstreams.get(
                    origin,
                    health_path=target.health_path or health_path,
                    authorization=authorization,
                )
                members.append(
                    Weighted(upstream, target.weight, authorization, target.send_request_id)
                )
            self._models[model.name] = ModelEntry(
                model.name, model.upstream_model, Balancer(members)
            )
        self._only = next(iter(self._models.values())) if len(self._models) == 1 else None

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def entries(self) -> list[ModelEntry]:
        return list(self._models.values())

    def origins(self) -> set[Origin]:
        """Every upstream origin some model sends requests to."""
        return {m.upstream.origin for e in self._models.values() for m in e.balancer.members}

    def entry(self, name: str) -> ModelEntry | None:
        """The entry of a served model by name (None: not served)."""
        return self._models.get(name)

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
