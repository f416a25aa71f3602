"""Services outlive a configuration: what they learnt survives a reload that leaves it alone."""

from __future__ import annotations

from pathlib import Path

from bastion.app import Services, authenticators
from bastion.auth.tokens import JwtAuthenticator
from bastion.policy.policy import Policy
from bastion.settings import parse_settings
from bastion.upstream.client import UpstreamPool


def _settings(tmp_path: Path, audience: str = "bastion") -> dict[str, object]:
    users = tmp_path / "htpasswd"
    users.write_text("")
    return {
        "auth": {
            "htpasswd": {"file": str(users)},
            "jwt": {
                "issuer": "https://idp.test",
                "audience": audience,
                "jwks_file": str(tmp_path / "jwks.json"),
            },
        }
    }


async def test_learnt_credentials_are_kept_until_their_settings_change(tmp_path: Path) -> None:
    first = parse_settings(_settings(tmp_path))
    pool = UpstreamPool(first.upstream)
    services = Services(first, keys=[], pool=pool)
    try:
        before = authenticators(first, services, Policy(first))
        again = parse_settings({**_settings(tmp_path), "roles": {"reader": {"routes": ["chat"]}}})
        after = authenticators(again, services, Policy(again))
        assert before[1] is after[1]  # the same htpasswd authenticator, cache and all
        jwt_before, jwt_after = before[2], after[2]
        assert isinstance(jwt_before, JwtAuthenticator) and isinstance(jwt_after, JwtAuthenticator)
        assert jwt_before is not jwt_after  # built anew (the roles it knows changed) ...
        assert jwt_before.keys is jwt_after.keys  # ... around the same fetched keys

        changed = parse_settings(_settings(tmp_path, audience="other"))
        jwt_changed = authenticators(changed, services, Policy(changed))[2]
        assert isinstance(jwt_changed, JwtAuthenticator)
        assert jwt_changed.keys is not jwt_before.keys
    finally:
        await pool.aclose()
