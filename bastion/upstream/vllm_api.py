"""Every HTTP route vLLM's OpenAI-compatible server registers, and what Bastion does with it.

This is knowledge about the upstream, kept as data so that it can be checked: a test compares
it with the gateway's endpoint table (every route Bastion forwards is here, with the same
kind and permission; no route decided "never" is an endpoint), another compares it with
docs/vllm-api.md (generated from it), and ``bastion probe`` asks a running server about each
route.

It was read from the code of vLLM 0.34.0 (``vllm/entrypoints/`` in the PyPI wheel, and the
``model-hosting-container-standards`` package that mounts SageMaker's routes). vLLM's
``--api-key`` is a middleware that guards only paths starting with ``/v1``, ``/v2``,
``/inference`` or ``/cohere`` (a plain prefix test): everything else, ``/tokenize``,
``/pooling``, ``/invocations`` and the control routes included, stays open even with a key.

To update it for a newer vLLM, list the routes its server registers (the routers under
``vllm/entrypoints/``, plugins and SageMaker's mounts), decide the new ones here, add the
inference and control ones to ``bastion/pipeline/endpoints.py``, then regenerate the page:
``python -m bastion.upstream.vllm_api > docs/vllm-api.md``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "GUARDED_PREFIXES",
    "ROUTES",
    "VLLM_VERSION",
    "Decision",
    "Kind",
    "Routing",
    "VllmRoute",
    "markdown",
]

VLLM_VERSION = "0.34.0"
GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")
"""The prefixes vLLM's ``--api-key`` middleware guards (``str.startswith``, nothing else)."""

_PARAMETER = re.compile(r"\{(\w+)\}")


class Kind(StrEnum):
    """What a route does on the model server, whoever calls it."""

    INFERENCE = "inference"
    """Runs the model (or its tokenizer and renderer) on the caller's input."""
    CONTROL = "control"
    """Changes the server's state or other callers' work."""
    INFO = "info"
    """Reads facts about the server (health, versions, metrics, configuration, its API)."""


class Decision(StrEnum):
    """What Bastion does with a route."""

    INFERENCE = "inference"
    """Forwarded to callers whose role has the permission, to the upstream of the model."""
    CONTROL = "control"
    """Forwarded to administrators only, and only with ``routes.control: admin``."""
    LOCAL = "local"
    """Answered by the gateway itself, never forwarded."""
    NEVER = "never"
    """Not an endpoint: refused with 404 like any unknown path."""


class Routing(StrEnum):
    """How the gateway picks the model (hence the upstream) of a forwarded request."""

    BODY = "body `model`"
    FORM = "form field `model`"
    PATH_ID = "the response id in the path"
    HEADER = "`X-Bastion-Model` header"
    NONE = "-"


@dataclass(frozen=True, slots=True)
class VllmRoute:
    methods: tuple[str, ...]
    """HTTP methods vLLM registers (``WS`` for a WebSocket route)."""
    path: str
    """As registered, with ``{parameters}``."""
    does: str
    registered: str
    """The task, flag or environment variable that makes vLLM register it."""
    kind: Kind
    decision: Decision
    why: str
    permission: str | None = None
    """Bastion's permission, for inference, control and local routes."""
    routing: Routing = Routing.NONE

    @property
    def guarded(self) -> bool:
        """Whether vLLM's ``--api-key`` guards it."""
        return self.path.startswith(GUARDED_PREFIXES)

    @property
    def websocket(self) -> bool:
        return self.methods == ("WS",)

    @property
    def has_parameters(self) -> bool:
        return _PARAMETER.search(self.path) is not None

    def sample_path(self) -> str:
        """The path with each parameter replaced by a made-up value."""
        return _PARAMETER.sub("bastion-probe", self.path)

    @property
    def name(self) -> str:
        return f"{' '.join(self.methods)} {self.path}"


_POST = ("POST",)
_GET = ("GET",)


def _inference(
    path: str,
    does: str,
    registered: str,
    permission: str,
    why: str,
    routing: Routing = Routing.BODY,
    methods: tuple[str, ...] = _POST,
) -> VllmRoute:
    return VllmRoute(
        methods,
        path,
        does,
        registered,
        Kind.INFERENCE,
        Decision.INFERENCE,
        why,
        permission,
        routing,
    )


def _control(
    path: str,
    does: str,
    registered: str,
    why: str,
    methods: tuple[str, ...] = _POST,
    kind: Kind | None = None,
) -> VllmRoute:
    """A control route; its kind is info when it only reads (GET), control otherwise."""
    if kind is None:
        kind = Kind.INFO if methods == _GET else Kind.CONTROL
    return VllmRoute(
        methods, path, does, registered, kind, Decision.CONTROL, why, "control", Routing.HEADER
    )


def _never(
    path: str,
    does: str,
    registered: str,
    kind: Kind,
    why: str,
    methods: tuple[str, ...] = _POST,
) -> VllmRoute:
    return VllmRoute(methods, path, does, registered, kind, Decision.NEVER, why)


_GENERATE = "generate task"
_SCALE_OUT = "`--enable-scale-out`, `--tokens-only` or `vllm launch render` (else a 403 stub)"
_DEV = "`VLLM_SERVER_DEV_MODE=1`"
_LORA = "`VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`"
_SCORING = "a scoring model"
_DOCS = "unless `--disable-fastapi-docs`"
_OPERATORS = "operating the model server: administrators only"
_WEIGHTS = "reinforcement-learning weight sync, operated by the trainer: administrators only"
_PIPELINE = (
    "a step of a disaggregated (token-in, token-out) pipeline between trusted components: "
    "administrators only"
)
_RENDER = _PIPELINE + "; its answer shows the templated prompt, system prompt included"
_COHERE = (
    "answers in Cohere's shape, whose token usage the gateway does not read (limits and "
    "billing would not see it)"
)
_ABORT = (
    "aborts by the external request id, which callers share: it would abort other callers' "
    "requests (none or an empty list aborts all); the gateway stops an abandoned request by "
    "closing its upstream connection"
)
_API_DOCS = (
    "describes vLLM's whole API, routes the gateway refuses included; Bastion documents "
    "what it serves"
)

_INFERENCE_ROUTES: tuple[VllmRoute, ...] = (
    _inference(
        "/v1/chat/completions", "chat; JSON or SSE", _GENERATE, "chat", "the OpenAI chat API"
    ),
    _inference(
        "/v1/completions",
        "text completion; JSON or SSE",
        _GENERATE,
        "completions",
        "the OpenAI completions API",
    ),
    _inference(
        "/v1/responses",
        "Responses API: create; JSON or SSE",
        _GENERATE,
        "responses",
        "the OpenAI Responses API",
    ),
    _inference(
        "/v1/responses/{response_id}",
        "retrieve a stored response (or replay its stream)",
        _GENERATE,
        "responses",
        "the Responses API (vLLM checks no owner of an id)",
        Routing.PATH_ID,
        _GET,
    ),
    _inference(
        "/v1/responses/{response_id}/cancel",
        "cancel a background response",
        _GENERATE,
        "responses",
        "the Responses API (vLLM checks no owner of an id)",
        Routing.PATH_ID,
    ),
    _inference(
        "/v1/messages",
        "Anthropic Messages; JSON or SSE",
        _GENERATE,
        "chat",
        "chat in Anthropic's shape, whose usage the gateway reads",
    ),
    _inference(
        "/v1/messages/count_tokens",
        "Anthropic token count (renders the prompt)",
        _GENERATE,
        "tokenize",
        "a tokenizer call in Anthropic's shape",
    ),
    _inference(
        "/generative_scoring",
        "label-token probabilities for a query and items",
        _GENERATE,
        "score",
        "scoring by a generative model: prompt only, usage reported",
    ),
    _inference(
        "/v1/decisions",
        "predicate, choice and score probabilities",
        "always (a handler for some architectures)",
        "decisions",
        "label probabilities: prompt only, usage reported",
    ),
    _inference(
        "/v1/systemone",
        "structured decisions over a state (text, image, audio, video URLs)",
        "always (a handler for some architectures)",
        "decisions",
        "label probabilities: prompt only, usage reported",
    ),
    _inference(
        "/v1/audio/transcriptions",
        "speech to text (multipart upload)",
        "transcription task",
        "audio",
        "the OpenAI audio API",
        Routing.FORM,
    ),
    _inference(
        "/v1/audio/translations",
        "speech to English text (multipart upload)",
        "transcription task",
        "audio",
        "the OpenAI audio API",
        Routing.FORM,
    ),
    _inference(
        "/v1/embeddings",
        "embeddings",
        "embed or token_embed task",
        "embeddings",
        "the OpenAI embeddings API",
    ),
    _inference(
        "/pooling",
        "raw pooling, or an IO-processor plugin",
        "a pooling task",
        "pooling",
        "pooling models' own API",
    ),
    _inference("/classify", "classification", "classify task", "classify", "classifiers' API"),
    _inference("/score", "score text pairs", _SCORING, "score", "cross-encoders' API"),
    _inference("/v1/score", "alias of /score", _SCORING, "score", "cross-encoders' API"),
    _inference("/rerank", "rerank documents for a query", _SCORING, "rerank", "rerankers' API"),
    _inference("/v1/rerank", "alias of /rerank", _SCORING, "rerank", "rerankers' API"),
    _inference("/v2/rerank", "alias of /rerank", _SCORING, "rerank", "rerankers' API"),
    _inference(
        "/invocations",
        "SageMaker: the first request type the body validates as",
        "always",
        "invocations",
        "SageMaker's entry point (the gateway drops its adapter header)",
    ),
    _inference(
        "/tokenize",
        "text or chat messages to token ids (chat renders media)",
        "always",
        "tokenize",
        "the tokenizer, per model",
    ),
    _inference("/detokenize", "token ids to text", "always", "tokenize", "the tokenizer"),
    _never(
        "/v1/chat/completions/batch",
        "several conversations in one request, JSON only",
        _GENERATE,
        Kind.INFERENCE,
        "each conversation may generate max_tokens, but a request reserves it once: limits "
        "would under-count it; send one request per conversation",
    ),
    _never(
        "/cohere/v2/chat",
        "Cohere Chat v2",
        "generate task, `VLLM_ENABLE_COHERE_API=1` and the `cohere` package",
        Kind.INFERENCE,
        _COHERE,
    ),
    _never("/v2/embed", "Cohere-style embeddings", "embed task", Kind.INFERENCE, _COHERE),
    _never(
        "/v1/realtime",
        "realtime transcription over a WebSocket (model chosen after the handshake)",
        "realtime task",
        Kind.INFERENCE,
        "a WebSocket: the gateway serves HTTP only and answers a handshake with 501",
        ("WS",),
    ),
)

_SCALE_OUT_ROUTES: tuple[VllmRoute, ...] = (
    _control(
        "/inference/v1/generate",
        "token-in, token-out generation (full sampling parameters, serialized multimodal items)",
        _SCALE_OUT,
        "takes engine-level inputs the gateway cannot inspect or limit: administrators only",
        kind=Kind.INFERENCE,
    ),
    *(
        _control(
            f"{api}/render",
            f"{name} body to token ids, no generation",
            _SCALE_OUT,
            _RENDER,
            kind=Kind.INFERENCE,
        )
        for api, name in (
            ("/v1/chat/completions", "chat"),
            ("/v1/completions", "completion"),
            ("/v1/messages", "Anthropic"),
            ("/v1/responses", "Responses"),
        )
    ),
    _control(
        "/v1/chat/completions/derender",
        "generated tokens to a chat answer",
        _SCALE_OUT,
        _PIPELINE,
        kind=Kind.INFERENCE,
    ),
    _control(
        "/v1/completions/derender",
        "generated tokens to a completion",
        _SCALE_OUT,
        _PIPELINE,
        kind=Kind.INFERENCE,
    ),
    _never(
        "/cohere/v2/chat/render",
        "Cohere body to token ids",
        "Cohere and scale-out",
        Kind.INFERENCE,
        _COHERE,
    ),
    _never(
        "/inference/v1/abort_requests",
        "abort requests by external id",
        _SCALE_OUT,
        Kind.CONTROL,
        _ABORT,
    ),
    _never(
        "/abort_requests",
        "abort requests by external id",
        f"`--tokens-only`, or {_DEV}",
        Kind.CONTROL,
        _ABORT,
    ),
)

_OPERATIONS: tuple[VllmRoute, ...] = (
    VllmRoute(
        _GET,
        "/health",
        "200, or 503 when the engine is dead",
        "always",
        Kind.INFO,
        Decision.LOCAL,
        "the gateway's own liveness (its health checks ask the upstream's)",
        "health",
    ),
    VllmRoute(
        _GET,
        "/v1/models",
        "the served model and adapters, with their server paths",
        "always",
        Kind.INFO,
        Decision.LOCAL,
        "the configured models the caller may use, never the upstream's paths",
        "models",
    ),
    _never(
        "/ping",
        "SageMaker's alias of /health",
        "always",
        Kind.INFO,
        "the gateway's /health and /ready answer that",
        ("GET", "POST"),
    ),
    _control("/load", "requests in flight", "always", _OPERATORS, _GET),
    _control("/version", "vLLM's version", "always", _OPERATORS, _GET),
    _control("/kv_event_sources", "the KV-event publishers' addresses", "always", _OPERATORS, _GET),
    _control("/metrics", "Prometheus metrics (and /metrics/*)", "always", _OPERATORS, _GET),
    _control(
        "/tokenizer_info",
        "tokenizer configuration, chat template included",
        "`--enable-tokenizer-info-endpoint`",
        _OPERATORS,
        _GET,
    ),
    _never("/openapi.json", "the OpenAPI schema", _DOCS, Kind.INFO, _API_DOCS, _GET),
    _never("/docs", "Swagger UI", _DOCS, Kind.INFO, _API_DOCS, _GET),
    _never("/docs/oauth2-redirect", "Swagger UI's OAuth helper", _DOCS, Kind.INFO, _API_DOCS, _GET),
    _never("/redoc", "ReDoc UI", _DOCS, Kind.INFO, _API_DOCS, _GET),
    _never(
        "/static/{path}",
        "the docs UI's files",
        "`--enable-offline-docs`",
        Kind.INFO,
        _API_DOCS,
        _GET,
    ),
    _control(
        "/v1/load_lora_adapter",
        "load a LoRA adapter (a server path or a Hub repo to download)",
        _LORA,
        _OPERATORS,
    ),
    _control("/v1/unload_lora_adapter", "unload a LoRA adapter", _LORA, _OPERATORS),
    _never(
        "/adapters",
        "SageMaker: load a LoRA adapter",
        _LORA,
        Kind.CONTROL,
        "an unguarded duplicate of /v1/load_lora_adapter",
    ),
    _never(
        "/adapters/{adapter_name}",
        "SageMaker: unload a LoRA adapter",
        _LORA,
        Kind.CONTROL,
        "an unguarded duplicate of /v1/unload_lora_adapter",
        ("DELETE",),
    ),
    _control("/start_profile", "start the profiler", "`--profiler-config`", _OPERATORS),
    _control("/stop_profile", "stop the profiler", "`--profiler-config`", _OPERATORS),
    _control("/scale_elastic_ep", "change the data-parallel size", _GENERATE, _OPERATORS),
    _control(
        "/is_scaling_elastic_ep",
        "whether a scale operation runs",
        _GENERATE,
        _OPERATORS,
        kind=Kind.INFO,
    ),
    _control(
        "/checkpoint/prepare",
        "drain and release memory for a checkpoint",
        "generate task and `--enable-sleep-mode`",
        _OPERATORS,
    ),
    _control(
        "/checkpoint/restore",
        "restore after a checkpoint",
        "generate task and `--enable-sleep-mode`",
        _OPERATORS,
    ),
    _control(
        "/checkpoint/status",
        "checkpoint state",
        "generate task and `--enable-sleep-mode`",
        _OPERATORS,
        _GET,
    ),
    _control(
        "/v1/fault_tolerance/apply",
        "start a recovery instruction",
        "`--enable-fault-tolerance`",
        _OPERATORS,
    ),
    _control(
        "/v1/fault_tolerance/status",
        "recovery state",
        "`--enable-fault-tolerance`",
        _OPERATORS,
        _GET,
    ),
)

_DEV_ROUTES: tuple[VllmRoute, ...] = (
    _control("/reset_prefix_cache", "empty the prefix cache", _DEV, _OPERATORS),
    _control("/reset_mm_cache", "empty the multimodal cache", _DEV, _OPERATORS),
    _control("/reset_encoder_cache", "empty the encoder cache", _DEV, _OPERATORS),
    _control(
        "/collective_rpc",
        "call any worker method by name",
        _DEV,
        "runs arbitrary worker methods: administrators only",
    ),
    _control(
        "/server_info",
        "the whole configuration and `VLLM_*` environment",
        _DEV,
        _OPERATORS,
        _GET,
    ),
    _control("/sleep", "offload weights and free the KV cache", _DEV, _OPERATORS),
    _control("/wake_up", "reload after /sleep", _DEV, _OPERATORS),
    _control("/release_kv_cache_memory", "free the KV cache's memory", _DEV, _OPERATORS),
    _control("/is_sleeping", "sleep state", _DEV, _OPERATORS, _GET),
    _control("/pause", "pause generation", _DEV, _OPERATORS),
    _control("/resume", "resume generation", _DEV, _OPERATORS),
    _control("/is_paused", "pause state", _DEV, _OPERATORS, _GET),
    *(
        _control(path, does, _DEV, _WEIGHTS)
        for path, does in (
            ("/init_weight_transfer_engine", "join a weight-transfer group"),
            ("/shutdown_weight_transfer_engine", "leave the weight-transfer group"),
            ("/start_weight_update", "begin a weight update"),
            ("/start_draft_weight_update", "begin a draft-model weight update"),
            ("/update_weights", "receive new weights"),
            ("/finish_weight_update", "end a weight update, set its version"),
            ("/update_weight_version", "set the weight version"),
            ("/weight_checker", "checksum, compare or reset the weights"),
        )
    ),
    _control("/weight_info", "the weight version", _DEV, _WEIGHTS, _GET),
    _control("/get_world_size", "the parallel world size", _DEV, _WEIGHTS, _GET),
)

ROUTES: tuple[VllmRoute, ...] = _INFERENCE_ROUTES + _SCALE_OUT_ROUTES + _OPERATIONS + _DEV_ROUTES
"""Every route of vLLM 0.34.0's OpenAI-compatible server (``vllm serve``)."""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _permission(route: VllmRoute) -> str:
    return f"`{route.permission}`" if route.permission else "-"


def markdown() -> str:
    """docs/vllm-api.md, generated from :data:`ROUTES`."""
    lines = [
        f"# vLLM {VLLM_VERSION}'s HTTP routes, and what Bastion does with each",
        "",
        _INTRO.strip(),
        "",
        "| route | what it does | kind | registered when | vLLM `--api-key` | Bastion "
        "| permission | routed to a model by | why |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for route in ROUTES:
        guard = "guards it" if route.guarded else "**open**"
        lines.append(
            f"| `{route.name}` | {_cell(route.does)} | {route.kind} | {_cell(route.registered)} "
            f"| {guard} "
            f"| {route.decision} | {_permission(route)} | {route.routing} | {_cell(route.why)} |"
        )
    return "\n".join(lines) + "\n\n" + _OUTRO.strip() + "\n"


_INTRO = f"""
Read from the code of vLLM {VLLM_VERSION} (`vllm/entrypoints/` in its PyPI wheel, and the
`model-hosting-container-standards` package that mounts SageMaker's routes). This page is
generated from `bastion/upstream/vllm_api.py`; a test fails when the two disagree, and another
when the inventory and the gateway's endpoint table (`bastion/pipeline/endpoints.py`) do.

vLLM's `--api-key` (or `VLLM_API_KEY`) guards only paths that start with `/v1`, `/v2`,
`/inference` or `/cohere`. Every other route stays open even with a key, and that includes
real inference (`/tokenize`, `/pooling`, `/classify`, `/score`, `/rerank`,
`/generative_scoring`, `/invocations`) and, when they are registered, control routes
(`/pause`, `/sleep`, `/collective_rpc`, `/abort_requests`, ...). `bastion probe URL` shows what
a running server leaves open (see [operations.md](operations.md#probing-a-model-server)).

Bastion's decisions:

- **inference**: forwarded to callers whose role has the permission, to an upstream of the
  model the request names; limits, guarded fields and accounting apply.
- **control**: forwarded to administrators only, and only with `routes.control: admin`
  (otherwise a 404); the `X-Bastion-Model` header picks the model whose upstream to address.
- **local**: answered by the gateway itself.
- **never**: not an endpoint; a 404 like any unknown path.

"what it does" is for a caller of vLLM directly. "Kind" in `bastion probe`'s table is what the
route does on the server: inference (runs the model), control (changes the server or other
callers' work), info (reads facts about it).
"""

_OUTRO = """
## Updating this page

For a newer vLLM: list the routes its server registers (the routers under
`vllm/entrypoints/`, what `register_api_routers` includes and under which flags, endpoint
plugins, SageMaker's mounts), change `ROUTES` in `bastion/upstream/vllm_api.py` and its
`VLLM_VERSION`, add every new inference or control route to `DEFAULT_ENDPOINTS` (a new
permission also goes into `bastion/policy/roles.py` and [permissions.md](permissions.md)),
then regenerate this page:

```
python -m bastion.upstream.vllm_api > docs/vllm-api.md
```
"""


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(markdown())
