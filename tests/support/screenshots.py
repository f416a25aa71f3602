"""Screenshots of every console page, for docs/img/ (``scripts/screenshots``).

Starts a fake upstream and a real gateway in a temporary directory, fills it with the sample
data of :mod:`tests.support.console_sample` (users, teams, keys, a week of usage), sends a few
real requests, then signs in with headless Chromium and photographs each page. The one page
that shows a key's secret has it masked in the picture. The sign-in page is photographed on a
second gateway, with OIDC configured (against :mod:`tests.support.idp`), so it shows both ways
in.
"""

from __future__ import annotations

import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, expect

from bastion.admin.client import AdminClient
from tests.support import console_sample
from tests.support.browser import chromium, open_tab, sign_in
from tests.support.clients import close_all, openai_client
from tests.support.console_sample import MODELS
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import GatewayProcess
from tests.support.idp import LocalIdp

DOWN_MODEL = "qwen2.5-7b"
"""A model whose one upstream does not answer, so the overview shows a red line too."""


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sample_config(upstream: FakeUpstream, state: Path) -> dict[str, Any]:
    models: list[dict[str, Any]] = [
        {"name": name, "upstreams": [{"url": upstream.url}]} for name in console_sample.MODELS
    ]
    models.append(
        {"name": DOWN_MODEL, "upstreams": [{"url": f"http://127.0.0.1:{_closed_port()}"}]}
    )
    return {
        "server": {"host": "127.0.0.1", "state_dir": str(state)},
        "store": {"last_used_interval": 0.2},
        "models": models,
        "upstream": {"health": {"interval": 0.5, "timeout": 0.5, "unhealthy_after": 1}},
        "usage": {"prices": {"*": {"input": 0.15, "output": 0.6}}},
        "limits": {
            "per_user": {"requests_per_minute": 600, "tokens_per_day": 400_000},
            "teams": {"research": {"cost_per_month": 1.0}},
            "per_model": {"concurrency": 64},
        },
    }


def _shoot(page: Page, out: Path, name: str, **options: Any) -> None:
    path = out / f"console-{name}.png"
    page.screenshot(path=str(path), **options)
    print(f"{path} ({path.stat().st_size // 1024} KiB)")


def _pages(page: Page, base: str, out: Path) -> None:
    for route in (
        "overview",
        "usage?days=7&period=day&by=user",
        "users",
        "teams",
        "audit",
        "limits",
    ):
        page.goto(f"{base}/ui/#{route}")
        expect(page.locator("main h1")).to_be_visible()
        page.wait_for_load_state("networkidle")
        _shoot(page, out, route.split("?")[0])
    page.goto(f"{base}/ui/#keys")
    page.get_by_role("button", name="New key").click()
    page.locator("#key-form select[name=user]").select_option("linus")
    page.locator("#key-form input[name=name]").fill("build-cache")
    page.locator("#key-form input[name=models]").fill("llama-3.1-8b")
    page.locator("#key-form select[name=expiry]").select_option("2592000")
    page.locator("#key-form button[type=submit]").click()
    expect(page.locator("#secret")).to_be_visible()
    _shoot(page, out, "keys", mask=[page.locator("#secret")], mask_color="#d5dbe7")


def take(out: Path) -> None:
    """Writes console-*.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    upstream = FakeUpstream().start()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        gateway = GatewayProcess(sample_config(upstream, state), state)
        try:
            key = gateway.printed_admin_key()
            sample = console_sample.populate(AdminClient(gateway.url, key))
            records = console_sample.week_of_usage(sample)
            console_sample.write_usage(f"sqlite:///{state / 'bastion.db'}", records)
            for name, model in (("ada", MODELS[0]), ("ci-bot", MODELS[0]), ("grace", MODELS[1])):
                openai_client(gateway.url, sample.secrets[name]).chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hello"}]
                )
            close_all()
            time.sleep(1)  # the keys' last use is written back every 0.2 s, usage every second
            with chromium() as browser:
                tab = open_tab(browser)
                sign_in(tab.page, gateway.url, key)
                _pages(tab.page, gateway.url, out)
                tab.close()
                _sign_in_page(browser, upstream, state / "oidc", out)
        finally:
            gateway.stop()
            upstream.stop()


def _sign_in_page(browser: Browser, upstream: FakeUpstream, state: Path, out: Path) -> None:
    """The sign-in page of a gateway with OIDC configured (so it offers both ways in)."""
    state.mkdir()
    with LocalIdp() as idp:
        config = sample_config(upstream, state)
        config["auth"] = {"jwt": {"issuer": idp.issuer, "audience": idp.client_id}}
        config["console"] = {"oidc": {"client_id": idp.client_id}}
        gateway = GatewayProcess(config, state)
        try:
            tab = open_tab(browser)
            tab.page.goto(gateway.url + "/ui/")
            expect(tab.page.locator("#oidc-signin")).to_be_visible()
            _shoot(tab.page, out, "signin")
            tab.close()
        finally:
            gateway.stop()


if __name__ == "__main__":
    take(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img"))
