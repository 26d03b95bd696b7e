"""An agent behind an HTTP proxy: the provider's aiohttp client honours HTTP(S)_PROXY and
NO_PROXY as the SDK's httpx client does, proxy credentials included.

The proxy is a real forward proxy on loopback (absolute-form requests, relayed to the
fake Messages API server); only the environment is set, the SDK is not touched."""

from __future__ import annotations

import base64
import socket
import socketserver
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from orchestra_cli.llm.anthropic import AnthropicProvider
from orchestra_cli.llm.base import LLMRequest
from tests.llm.fake_anthropic import FakeAnthropic, text


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _Relay(socketserver.BaseRequestHandler):
    """One proxied request: its head recorded, rewritten to origin-form, then relayed."""

    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            head += chunk
        line, rest = head.split(b"\r\n", 1)
        method, target, version = line.decode().split(" ")
        fields = rest.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
        self.server.seen.append({"method": method, "target": target, "headers": headers})  # type: ignore[attr-defined]
        url = urllib.parse.urlsplit(target)
        upstream = socket.create_connection((url.hostname, url.port or 80))
        path = url.path + (f"?{url.query}" if url.query else "")
        upstream.sendall(f"{method} {path} {version}\r\n".encode() + rest)
        back = threading.Thread(target=_pipe, args=(upstream, self.request), daemon=True)
        back.start()
        _pipe(self.request, upstream)
        back.join(30)
        upstream.close()


@pytest.fixture
def proxy() -> Iterator[Any]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Relay)
    server.daemon_threads = True
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _ask(fake: FakeAnthropic) -> str:
    fake.script(text("through the proxy"))
    provider = AnthropicProvider(fake.api_key, base_url=fake.url, max_attempts=1)
    request = LLMRequest(system="be brief", prompt="say hi", model="claude-sonnet-5-5")
    return provider.complete(request).text


def _use_proxy(monkeypatch: pytest.MonkeyPatch, proxy: Any, credentials: str = "") -> None:
    """HTTP_PROXY names the test's proxy, and no other proxy variable is set."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    host, port = proxy.server_address[:2]
    monkeypatch.setenv("HTTP_PROXY", f"http://{credentials}{host}:{port}")


# the SDK's vendored aiohttp transport hands the proxy's credentials over as aiohttp's
# BasicAuth and proxy_auth, which aiohttp deprecates (warnings Python hides outside tests)
@pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The 'proxy_auth' parameter is deprecated:DeprecationWarning")
def test_calls_go_through_the_proxy_the_environment_names_with_its_credentials(
    fake: FakeAnthropic, proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_proxy(monkeypatch, proxy, "ops:s3cret@")
    assert _ask(fake) == "through the proxy"
    assert len(proxy.seen) == 1
    seen = proxy.seen[0]
    assert (seen["method"], seen["target"]) == ("POST", f"{fake.url}/v1/messages")
    expected = "Basic " + base64.b64encode(b"ops:s3cret").decode()
    assert seen["headers"]["proxy-authorization"] == expected
    assert len(fake.requests) == 1  # and the API answered it


def test_no_proxy_sends_the_call_direct(
    fake: FakeAnthropic, proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_proxy(monkeypatch, proxy)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert _ask(fake) == "through the proxy"
    assert proxy.seen == []
    assert len(fake.requests) == 1
