#!/usr/bin/env python3
"""The container's health check: exit 0 when the gateway answers ``GET /health`` with 200.

The official slim Python images have no curl, so the image's HEALTHCHECK runs this with the
interpreter it already has. Standard library only, no proxy (an ``HTTP_PROXY`` in the
container's environment must not carry a loopback probe elsewhere).

The address: ``HEALTHCHECK_URL`` if set; otherwise ``http://127.0.0.1:PORT/health``
with PORT from ``BASTION_SERVER__PORT`` (default 8080). An ``https://`` URL is probed without
verifying the certificate: the probe asks the process on this host whether it is alive, and
the certificate names the service, not 127.0.0.1.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request

TIMEOUT = 3.0


def health_url(environ: dict[str, str]) -> str:
    given = environ.get("HEALTHCHECK_URL")
    if given:
        return given
    port = environ.get("BASTION_SERVER__PORT") or "8080"
    return f"http://127.0.0.1:{port}/health"


def probe(url: str, timeout: float = TIMEOUT) -> int:
    """Return the exit status: 0 healthy, 1 anything else (and say why on stderr)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"unhealthy: {url}: {exc}\n")
        return 1
    if status != 200:
        sys.stderr.write(f"unhealthy: {url} answered {status}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(probe(health_url(dict(os.environ))))
