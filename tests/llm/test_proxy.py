"""An agent behind an HTTP proxy: the provider's aiohttp client honours HTTP(S)_PROXY and
NO_PROXY as the SDK's httpx client does, proxy credentials included, and an HTTPS API is
reached through the proxy's CONNECT tunnel, trusting the CAs SSL_CERT_FILE names.

The proxy is a real forward proxy on loopback (absolute-form requests relayed to the
fake Messages API server; CONNECT tunnels to its TLS listener, whose certificate a
throwaway CA signed); only the environment is set, the SDK is not touched."""

from __future__ import annotations

import base64
import socket
import socketserver
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from orchestra_cli.errors import LLMError
from orchestra_cli.llm.anthropic import AnthropicProvider
from orchestra_cli.llm.base import LLMRequest
from tests.llm.certs import make_ca_and_server
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
        if method == "CONNECT":  # a tunnel: the bytes after the head are the client's TLS
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            upstream.sendall(head.split(b"\r\n\r\n", 1)[1])
        else:
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


@pytest.fixture
def tls_fake(tmp_path: Any) -> Iterator[tuple[FakeAnthropic, str, Any]]:
    """The fake API behind TLS: (server, its https URL, the CA file that signed it)."""
    ca_file, context = make_ca_and_server(tmp_path)
    server = FakeAnthropic()
    server.server.socket = context.wrap_socket(server.server.socket, server_side=True)
    server.start()
    yield server, server.url.replace("http://", "https://"), ca_file
    server.stop()


def _ask(fake: FakeAnthropic, url: str | None = None, attempts: int = 1) -> str:
    fake.script(text("through the proxy"))
    provider = AnthropicProvider(
        fake.api_key, base_url=url or fake.url, max_attempts=attempts, backoff_seconds=0.01
    )
    request = LLMRequest(system="be brief", prompt="say hi", model="claude-sonnet-5-5")
    return provider.complete(request).text


def _use_proxy(
    monkeypatch: pytest.MonkeyPatch, proxy: Any, credentials: str = "", var: str = "HTTP_PROXY"
) -> None:
    """``var`` names the test's proxy, and no other proxy or CA variable is set."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    host, port = proxy.server_address[:2]
    monkeypatch.setenv(var, f"http://{credentials}{host}:{port}")


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


@pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The 'proxy_auth' parameter is deprecated:DeprecationWarning")
def test_an_https_api_is_reached_through_the_proxys_tunnel_trusting_ssl_cert_file(
    tls_fake: tuple[FakeAnthropic, str, Any], proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url, ca_file = tls_fake
    _use_proxy(monkeypatch, proxy, "ops:s3cret@", var="HTTPS_PROXY")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    assert _ask(fake, url) == "through the proxy"
    host_port = url.removeprefix("https://")
    assert [(s["method"], s["target"]) for s in proxy.seen] == [("CONNECT", host_port)]
    expected = "Basic " + base64.b64encode(b"ops:s3cret").decode()
    assert proxy.seen[0]["headers"]["proxy-authorization"] == expected
    assert len(fake.requests) == 1  # the API answered it, inside the tunnel


def test_an_untrusted_certificate_is_one_clear_error_and_not_retried(
    tls_fake: tuple[FakeAnthropic, str, Any], proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url, _ = tls_fake
    _use_proxy(monkeypatch, proxy, var="HTTPS_PROXY")  # and no SSL_CERT_FILE
    with pytest.raises(LLMError) as raised:
        _ask(fake, url, attempts=3)
    message = str(raised.value)
    assert "\n" not in message
    assert f"the TLS certificate of the Anthropic API at {url} does not verify" in message
    assert "unable to get local issuer certificate" in message
    assert "SSL_CERT_FILE" in message
    assert raised.value.retryable is False  # nor is the task: retrying cannot help
    assert [s["method"] for s in proxy.seen] == ["CONNECT"]  # once
    assert fake.requests == []


def test_a_certificate_for_another_host_says_so_and_a_budgeted_count_fails_alike(
    tls_fake: tuple[FakeAnthropic, str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url, ca_file = tls_fake
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # trusted CA, but for 127.0.0.1 only
    other = url.replace("127.0.0.1", "localhost")
    provider = AnthropicProvider(fake.api_key, base_url=other, max_attempts=3)
    request = LLMRequest(system="be brief", prompt="say hi", model="claude-sonnet-5-5")
    for attempt in (lambda: provider.complete(request), lambda: provider.count_tokens(request)):
        with pytest.raises(LLMError) as raised:
            attempt()  # a count (a budgeted call's ledger step) reserves no guess instead
        message = str(raised.value)
        assert f"the TLS certificate of the Anthropic API at {other} does not verify" in message
        assert "Hostname mismatch" in message and "SSL_CERT_FILE" not in message
        assert "the certificate names another host: check llm.base_url" in message
        assert raised.value.retryable is False
    assert fake.requests == [] and fake.count_requests == []
