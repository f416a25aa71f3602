"""What a starting gateway tells people, shared by the single-process and worker starts:
the URL it listens on, the model a managed engine serves, and the welcome text."""

from __future__ import annotations

import shlex
import socket
import sys
from typing import TextIO

from bastion.server.startup import Welcome
from bastion.settings import ModelSettings, Secret, UpstreamTarget
from bastion.upstream.engine import ManagedEngine

__all__ = ["engine_model", "listen_url", "print_welcome"]


def engine_model(engine: ManagedEngine) -> ModelSettings:
    """The model a managed engine serves, as if it were configured."""
    target = UpstreamTarget(
        url=engine.base_url,
        api_key=Secret(value=engine.api_key),
        send_request_id=engine.accepts_request_ids,
        health_path=engine.health_path,
    )
    return ModelSettings(name=engine.served_name, upstreams=(target,))


def listen_url(sock: socket.socket, *, https: bool = False) -> str:
    """The URL callers use for the listening socket (a wildcard address as 127.0.0.1)."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1"
    return f"{'https' if https else 'http'}://{shown}:{port}"


def print_welcome(out: TextIO, url: str, model: str, welcome: Welcome) -> None:
    """What a start prints for people: where it serves and, on the first start, the
    administrator key with a curl and a Python example (the key is shown this once)."""
    if welcome.new_key is None:
        out.write(
            f"\nBastion is serving {model} at {url}\n"
            f"The administrator key was shown when it was created; only its hash is kept "
            f"(in {welcome.kept_in}). {welcome.recover}\n\n"
        )
        out.flush()
        return
    key = welcome.new_key
    python = shlex.quote(sys.executable)  # the interpreter that has the openai package
    out.write(
        f"""
Bastion is serving {model} at {url}

Administrator API key (shown this once; only its hash is kept in {welcome.kept_in}):

    {key}

Try it:

    curl {url}/v1/chat/completions \\
      -H "Authorization: Bearer {key}" \\
      -H "Content-Type: application/json" \\
      -d '{{"model": "{model}", "max_tokens": 32,
           "messages": [{{"role": "user", "content": "Hello!"}}]}}'

    {python} - <<'PY'
    from openai import OpenAI
    client = OpenAI(base_url="{url}/v1", api_key="{key}")
    reply = client.chat.completions.create(
        model="{model}", messages=[{{"role": "user", "content": "Hello!"}}], max_tokens=32)
    print(reply.choices[0].message.content)
    PY

"""
    )
    out.flush()
