"""Guarded request-body fields: refused, removed, allowed per role; the tenant's cache salt."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bastion.auth.identity import Identity
from bastion.errors import BadRequestError, ConfigError
from bastion.pipeline.fields import GUARDED_FIELDS, REMOVE, FieldPolicy
from bastion.settings import FieldsSettings

ROLES = {"admin", "user", "batch"}
ALICE = Identity("alice", "user", "key_a1", "api_key", teams=("red",))
BOB = Identity("bob", "user", "key_b1", "api_key", teams=("red",))
ROOT = Identity("root", "admin", "key_r1", "api_key")


def policy(**settings: object) -> FieldPolicy:
    return FieldPolicy(FieldsSettings.model_validate(settings), ROLES)


@pytest.mark.parametrize("rule", [r for r in GUARDED_FIELDS if r.action == "refuse"])
def test_a_refused_field_is_a_400_naming_it(rule: object) -> None:
    name = rule.name  # type: ignore[attr-defined]
    with pytest.raises(BadRequestError) as caught:
        policy().check({"model": "m", name: {"x": 1}}, ALICE)
    assert caught.value.param == name
    assert caught.value.code == "field_not_allowed"
    assert name in caught.value.message


def test_priority_is_removed_not_refused() -> None:
    assert policy().check({"model": "m", "priority": -100}, ALICE) == {"priority": REMOVE}


def test_ordinary_bodies_pass_untouched() -> None:
    body = {"model": "m", "messages": [], "chat_template_kwargs": {"enable_thinking": False}}
    assert policy().check(body, ALICE) is None


def test_a_role_can_be_allowed_a_field() -> None:
    allowing = policy(allow={"admin": ["kv_transfer_params", "priority"]})
    body = {"model": "m", "kv_transfer_params": {"do_remote_prefill": True}, "priority": 1}
    assert allowing.check(body, ROOT) is None
    with pytest.raises(BadRequestError):
        allowing.check(body, ALICE)


def test_allowing_an_unguarded_field_or_an_unknown_role_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="messages"):
        policy(allow={"admin": ["messages"]})
    with pytest.raises(ConfigError, match="nobody"):
        policy(allow={"nobody": ["priority"]})


@pytest.mark.parametrize(
    ("mode", "same_for_bob"), [("user", False), ("team", True), ("key", False)]
)
def test_cache_salt_per_tenant(mode: str, same_for_bob: bool) -> None:
    salted = policy(cache_salt=mode)
    alice = salted.check({"model": "m"}, ALICE)
    bob = salted.check({"model": "m"}, BOB)
    assert alice is not None and bob is not None
    assert len(alice["cache_salt"]) == 32
    assert (alice["cache_salt"] == bob["cache_salt"]) is same_for_bob
    # stable across calls and across gateway replicas (no per-process secret)
    assert policy(cache_salt=mode).check({"model": "m"}, ALICE) == alice


def test_a_caller_cannot_pick_its_own_salt_when_the_gateway_sets_one() -> None:
    with pytest.raises(BadRequestError):
        policy(cache_salt="user").check({"model": "m", "cache_salt": "victim"}, ALICE)


def test_no_salt_by_default() -> None:
    assert policy().check({"model": "m"}, ALICE) is None


def chat_with_image(url: str) -> dict[str, object]:
    part = {"type": "image_url", "image_url": {"url": url}}
    return {"model": "m", "messages": [{"role": "user", "content": [part]}]}


def check_raw(body: dict[str, object], checker: FieldPolicy | None = None) -> None:
    (checker or policy()).check(body, ALICE, orjson.dumps(body))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/metrics",
        "http://localhost/x.png",
        "http://[::1]/x.png",
        "http://10.0.0.5/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://192.168.1.1/x.png",
        "http://user@172.16.0.1:80/x.png",
        "http://metadata.google.internal/x",
        "http://printer.local/x",
        "http://intranet/x.png",
        "http://127.1/x.png",
        "http://2130706433/x.png",
        "http://0x7f.0.0.1/x.png",
        "file:///etc/passwd",
        "ftp://example.com/x.png",
        "gopher://example.com/",
        "https:example.com",
    ],
)
def test_media_urls_to_internal_hosts_are_refused(url: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        check_raw(chat_with_image(url))
    assert caught.value.code == "media_url_not_allowed"


@pytest.mark.parametrize(
    "body",
    [
        # Anthropic image source
        {"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "http://10.1.2.3/a.png"}}]}]},
        # Responses API input_image
        {"model": "m", "input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "http://127.0.0.1/a.png"}]}]},
        # audio and video parts, URL given as a string
        {"model": "m", "messages": [{"role": "user", "content": [
            {"type": "audio_url", "audio_url": "http://localhost/a.wav"}]}]},
        {"model": "m", "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": "file:///srv/v.mp4"}}]}]},
    ],
)  # fmt: skip
def test_every_media_part_shape_is_checked(body: dict[str, object]) -> None:
    with pytest.raises(BadRequestError):
        check_raw(body)


@pytest.mark.parametrize(
    "url",
    [
        "https://upload.wikimedia.org/a.png",
        "http://example.com:8080/x",
        "data:image/png;base64,AAAA",
    ],
)
def test_public_and_inline_media_pass(url: str) -> None:
    check_raw(chat_with_image(url))


def test_media_urls_any_turns_the_check_off() -> None:
    check_raw(chat_with_image("http://10.0.0.5/x.png"), policy(media_urls="any"))


def test_security_md_lists_every_guarded_field_with_what_the_caller_gets() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    for rule in GUARDED_FIELDS:
        got = "400 `field_not_allowed`" if rule.action == "refuse" else "removed silently"
        assert f"| `{rule.name}` | {got} |" in doc, rule.name
