"""Secrets from Vault / OpenBao KV v2 through hvac.

``vault://host:port/mount/path`` (``vaults://`` for TLS): a secret name is a
field of the KV v2 secret at ``mount``/``path``. Auth is ``VAULT_TOKEN`` or
AppRole (``VAULT_ROLE_ID`` / ``VAULT_SECRET_ID``), the Vault CLI's own
conventions. The token is renewed (renew-self) before it expires; when it
can no longer be renewed, AppRole logs in again. Reads are cached briefly.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

from orchestra_cli.errors import ConfigError, SecretsError, SecretsUnavailable
from orchestra_cli.logs import register_secret
from orchestra_cli.secrets.base import health_report
from orchestra_cli.settings import VaultSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_AUTH_ATTEMPTS = 2  # a read denied with an AppRole token logs in once more, then gives up


@dataclass(frozen=True)
class VaultLocation:
    address: str
    mount: str
    path: str

    @classmethod
    def parse(cls, url: str) -> VaultLocation:
        parts = urlsplit(url)
        segments = [s for s in parts.path.split("/") if s]
        if parts.scheme not in ("vault", "vaults") or not parts.hostname or len(segments) < 2:
            raise ConfigError(
                f"secrets_url {url!r} is not vault://host:port/mount/path",
                "e.g. ORCHESTRA_SECRETS_URL=vault://127.0.0.1:8200/secret/orchestra",
            )
        scheme = "https" if parts.scheme == "vaults" else "http"
        port = f":{parts.port}" if parts.port else ""
        return cls(f"{scheme}://{parts.hostname}{port}", segments[0], "/".join(segments[1:]))


class VaultSecrets:
    """``SecretsProvider`` reading fields of one KV v2 secret."""

    name = "vault"

    def __init__(
        self,
        url: str,
        settings: VaultSettings | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.location = VaultLocation.parse(url)
        self.settings = settings or VaultSettings()
        env = os.environ if env is None else env
        self._token = env.get("VAULT_TOKEN") or None
        self._role_id = env.get("VAULT_ROLE_ID") or None
        self._secret_id = env.get("VAULT_SECRET_ID") or None
        for value in (self._token, self._secret_id):
            if value:
                register_secret(value)
        self._client: Any = None
        self._expires_at: float | None = None  # monotonic; None: never expires
        self._renewable = False
        self._cache: dict[str, tuple[float, dict[str, str]]] = {}
        self._lock = threading.RLock()
        self.logins = 0  # AppRole logins so far, for health and tests
        self.renewals = 0

    @property
    def uses_approle(self) -> bool:
        return bool(self._role_id and self._secret_id)

    # -- public --------------------------------------------------------------
    def get(self, key: str) -> str | None:
        """The field ``key`` of the configured secret; None when absent (or no secret)."""
        data = self.read(self.location.path, missing_ok=True)
        value = data.get(key)
        return str(value) if value not in (None, "") else None

    def read(self, path: str, *, missing_ok: bool = False) -> dict[str, str]:
        """Every field of the KV v2 secret at ``path`` (cached for ``vault.cache_seconds``)."""
        with self._lock:
            cached = self._cache.get(path)
            if cached and time.monotonic() - cached[0] < self.settings.cache_seconds:
                return cached[1]
            data = self._read_fresh(path, missing_ok)
            for value in data.values():
                register_secret(str(value))
            self._cache[path] = (time.monotonic(), data)
            return data

    def health(self) -> dict[str, Any]:
        """``health_report`` plus initialized, sealed, version and the round trip
        (no token needed); ok only when initialized and unsealed."""
        client = self._make_client()
        started = time.perf_counter()
        try:
            result = self._call(
                lambda: client.sys.read_health_status(
                    method="GET", standby_ok=True, sealed_code=200, uninit_code=200
                ),
                "read health",
            )
        except SecretsError as exc:
            return health_report(
                self.name,
                self.location.address,
                exc.message,
                initialized=None,
                sealed=None,
                version=None,
                latency_ms=None,
            )
        # hvac's JSON adapter returns a dict; the raw adapter a requests.Response
        body = result if isinstance(result, dict) else result.json()
        initialized, sealed = bool(body.get("initialized")), bool(body.get("sealed"))
        addr = self.location.address
        error = None
        if sealed or not initialized:
            error = f"Vault at {addr} is {'sealed' if sealed else 'not initialized'}"
        return health_report(
            self.name,
            addr,
            error,
            initialized=initialized,
            sealed=sealed,
            version=str(body.get("version", "")),
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    def token_ttl(self) -> float | None:
        """Seconds until the current token expires; None when it never does."""
        if self._expires_at is None:
            return None
        return self._expires_at - time.monotonic()

    # -- reading -------------------------------------------------------------
    def _read_fresh(self, path: str, missing_ok: bool) -> dict[str, str]:
        import hvac.exceptions

        where = f"{self.location.mount}/{path}"
        for attempt in range(1, MAX_AUTH_ATTEMPTS + 1):
            kv = self._authenticated().secrets.kv.v2
            try:
                resp = self._call(
                    partial(
                        kv.read_secret_version,
                        path=path,
                        mount_point=self.location.mount,
                        raise_on_deleted_version=True,
                    ),
                    f"read {where}",
                    passthrough=(hvac.exceptions.InvalidPath, hvac.exceptions.Forbidden),
                )
            except hvac.exceptions.InvalidPath as exc:
                if missing_ok:
                    log.warning("no secret at %s in Vault %s", where, self.location.address)
                    return {}
                raise SecretsError(
                    f"no secret at {where} in Vault at {self.location.address}",
                    f"create it: bao kv put {where} NAME=value",
                ) from exc
            except hvac.exceptions.Forbidden as exc:
                if self.uses_approle and attempt < MAX_AUTH_ATTEMPTS:
                    log.warning("Vault denied %s; logging in with AppRole again", where)
                    self._client = None
                    continue
                raise SecretsError(
                    f"Vault at {self.location.address} denied reading {where} "
                    "(permission denied: wrong, expired or revoked token, or policy)",
                    "set a valid VAULT_TOKEN (or VAULT_ROLE_ID / VAULT_SECRET_ID) "
                    f"with read access to {self.location.mount}/data/{path}",
                ) from exc
            data = resp.get("data", {}).get("data") or {}
            return {str(k): str(v) for k, v in data.items()}
        raise AssertionError("unreachable: the loop returns or raises")

    def _call(
        self,
        fn: Callable[[], T],
        what: str,
        passthrough: tuple[type[BaseException], ...] = (),
    ) -> T:
        """Run one hvac call, turning library errors into orchestra errors."""
        import hvac.exceptions
        import requests

        addr = self.location.address
        try:
            return fn()
        except passthrough:
            raise
        except requests.exceptions.RequestException as exc:
            raise SecretsUnavailable(
                f"cannot reach Vault at {addr} ({type(exc).__name__})",
                "start it with `orchestra up` or fix ORCHESTRA_SECRETS_URL",
            ) from exc
        except hvac.exceptions.VaultDown as exc:
            raise SecretsUnavailable(
                f"Vault at {addr} is sealed", "unseal it: bao operator unseal"
            ) from exc
        except hvac.exceptions.VaultNotInitialized as exc:
            raise SecretsUnavailable(
                f"Vault at {addr} is not initialized", "initialize it: bao operator init"
            ) from exc
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as exc:
            raise SecretsError(
                f"Vault at {addr} denied {what} (permission denied)",
                "check VAULT_TOKEN (or VAULT_ROLE_ID / VAULT_SECRET_ID) and its policy",
            ) from exc
        except hvac.exceptions.VaultError as exc:
            raise SecretsError(
                f"Vault at {addr} failed to {what} ({type(exc).__name__})",
                "check the server log and the secrets_url",
            ) from exc

    # -- auth and token lifecycle -------------------------------------------
    def _make_client(self) -> Any:
        import hvac

        return hvac.Client(
            url=self.location.address, token=self._token, timeout=self.settings.timeout
        )

    def _authenticated(self) -> Any:
        if self._client is None:
            self._client = self._login()
        else:
            self._keep_alive()
        return self._client

    def _login(self) -> Any:
        client = self._make_client()
        if self.uses_approle:
            resp = self._call(
                lambda: client.auth.approle.login(
                    role_id=self._role_id,
                    secret_id=self._secret_id,
                    mount_point=self.settings.approle_mount,
                    use_token=True,
                ),
                "log in with AppRole",
            )
            register_secret(str(client.token))
            self.logins += 1
            self._track(resp.get("auth", {}).get("lease_duration"), resp["auth"].get("renewable"))
            log.info("logged in to Vault at %s with AppRole", self.location.address)
            return client
        if not self._token:
            raise SecretsError(
                f"no credentials for Vault at {self.location.address}",
                "set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID",
            )
        data = self._call(lambda: client.auth.token.lookup_self(), "look up the token")["data"]
        self._track(data.get("ttl"), data.get("renewable"))
        return client

    def _track(self, ttl: Any, renewable: Any) -> None:
        seconds = float(ttl or 0)
        self._expires_at = time.monotonic() + seconds if seconds > 0 else None
        self._renewable = bool(renewable)

    def _keep_alive(self) -> None:
        """Renew the token before it expires; log in again when renewal is over."""
        left = self.token_ttl()
        if left is None or left > self.settings.renew_before_seconds:
            return
        if self._renewable and left > 0 and self._renew():
            return
        if self.uses_approle:
            log.info("Vault token cannot be renewed further; logging in with AppRole again")
            self._client = self._login()
            return
        if left <= 0:
            raise SecretsError(
                f"the Vault token for {self.location.address} has expired",
                "set a new VAULT_TOKEN, or use AppRole (VAULT_ROLE_ID / VAULT_SECRET_ID)",
            )

    def _renew(self) -> bool:
        """Renew-self; False when the token is at its max TTL (renewal no longer helps)."""
        try:
            resp = self._call(lambda: self._client.auth.token.renew_self(), "renew the token")
        except SecretsError as exc:
            log.warning("Vault token renewal failed: %s", exc.message)
            return False
        auth = resp.get("auth", {})
        self._track(auth.get("lease_duration"), auth.get("renewable"))
        self.renewals += 1
        left = self.token_ttl()
        log.info("renewed the Vault token (ttl %.0fs)", left or 0)
        return left is None or left > self.settings.renew_before_seconds / 2
