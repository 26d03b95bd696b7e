"""Bearer-token auth: one secret (``ORCHESTRA_API_TOKEN``), compared in constant time."""

from __future__ import annotations

import hmac

from orchestra_cli.errors import OrchestraError, UsageError
from orchestra_cli.settings import Settings

TOKEN_SECRET = "ORCHESTRA_API_TOKEN"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
TOKEN_HINT = "send `Authorization: Bearer <ORCHESTRA_API_TOKEN>`"
MIN_TOKEN_CHARS = 32  # 128 bits as hex: a token anyone could guess protects nothing
TOKEN_RECIPE = (
    "`openssl rand -hex 24` (or `python3 -c 'import secrets; print(secrets.token_hex(24))'`)"
)


class Unauthorized(OrchestraError):
    """A request without the API token, or with a wrong one."""


def resolve_token(settings: Settings) -> str | None:
    """The API token from the secrets chain (Vault → environment → .env), if set."""
    from orchestra_cli.backends import open_secrets

    value, _ = open_secrets(settings).lookup(TOKEN_SECRET)
    return value


def check_serving_allowed(token: str | None, host: str, insecure: bool) -> None:
    """Refuse to serve without a token, except with --insecure on a loopback address,
    and with a token shorter than MIN_TOKEN_CHARS."""
    if token and len(token.strip()) < MIN_TOKEN_CHARS:
        size = len(token.strip())
        raise UsageError(
            f"{TOKEN_SECRET} has {size} character{'' if size == 1 else 's'}, too short to "
            f"guard the API (at least {MIN_TOKEN_CHARS}: 128 bits as hex)",
            f"generate one with {TOKEN_RECIPE}",
        )
    if token:
        return
    if not insecure:
        raise UsageError(
            f"no API token: {TOKEN_SECRET} is not set",
            f"set {TOKEN_SECRET} (environment, .env or Vault), or pass --insecure "
            "--host 127.0.0.1 to serve without auth on this machine only",
        )
    if host not in LOOPBACK_HOSTS:
        raise UsageError(
            f"--insecure serves without a token only on 127.0.0.1, not on {host}",
            f"set {TOKEN_SECRET} to serve on other addresses",
        )


def bearer(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer …`` header, or None."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


def token_ok(expected: str | None, given: str | None) -> bool:
    """Whether ``given`` is the token; with no token configured (--insecure) anything is."""
    if expected is None:
        return True
    if given is None:
        return False
    # bytes: compare_digest rejects non-ASCII str, and a client may send anything
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def check_token(expected: str | None, authorization: str | None) -> None:
    """Raise ``Unauthorized`` unless the header carries the token."""
    given = bearer(authorization)
    if token_ok(expected, given):
        return
    what = "missing API token" if given is None else "wrong API token"
    raise Unauthorized(what, TOKEN_HINT)
