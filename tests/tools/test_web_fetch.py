"""WebFetch against a real HTTP server on 127.0.0.1 (and nothing else)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from orchestra_cli.tools.base import Limits, ToolContext
from orchestra_cli.tools.web import WebFetch, html_text

PAGE = (
    b"<html><head><title>Docs</title><style>p{color:red}</style>"
    b"<script>alert('x')</script></head><body><h1>Hello</h1><p>World &amp; more</p></body></html>"
)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        routes = {
            "/page": (200, "text/html; charset=utf-8", PAGE),
            "/json": (200, "application/json", b'{"ok": true}'),
            "/big": (200, "text/plain", b"x" * 3_000_000),
            "/image": (200, "image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 100),
            "/missing": (404, "text/plain", b"no such page"),
        }
        if self.path == "/slow":
            time.sleep(3)
        if self.path.startswith("/redirect"):
            target = {
                "/redirect": "/page",
                "/redirect-file": "file:///etc/passwd",
                "/redirect-loop": "/redirect-loop",
            }[self.path]
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()
            return
        status, kind, body = routes.get(self.path, (200, "text/plain", b"slow"))
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def local(workspace: Path) -> ToolContext:
    """A context that may reach 127.0.0.1 (the test server)."""
    return ToolContext(workspace=workspace, fetch_private=True)


def test_html_is_reduced_to_its_text() -> None:
    assert html_text(PAGE.decode()) == "Docs\nHello\nWorld & more"


def test_webfetch_returns_a_pages_text(server: str, local: ToolContext) -> None:
    out = WebFetch().run({"url": f"{server}/page", "prompt": "the greeting"}, local)
    assert not out.is_error
    assert out.content == f"URL: {server}/page\nStatus: 200\n\nDocs\nHello\nWorld & more"


def test_webfetch_returns_json_as_it_is(server: str, local: ToolContext) -> None:
    assert WebFetch().run({"url": f"{server}/json"}, local).content.endswith('{"ok": true}')


def test_webfetch_refuses_loopback_unless_the_context_allows_private_hosts(
    server: str, workspace: Path
) -> None:
    out = WebFetch().run({"url": f"{server}/page"}, ToolContext(workspace=workspace))
    assert out.is_error and "loopback or private address" in out.content


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "not a url"])
def test_webfetch_refuses_what_is_not_http(url: str, local: ToolContext) -> None:
    out = WebFetch().run({"url": url}, local)
    assert out.is_error and "is not an http(s) URL" in out.content


def test_webfetch_follows_redirects_and_checks_each_hop(server: str, local: ToolContext) -> None:
    out = WebFetch().run({"url": f"{server}/redirect"}, local)
    assert out.content.startswith(f"URL: {server}/page\n") and "Hello" in out.content
    out = WebFetch().run({"url": f"{server}/redirect-file"}, local)
    assert out.is_error and "'file:///etc/passwd' is not an http(s) URL" in out.content
    out = WebFetch().run({"url": f"{server}/redirect-loop"}, local)
    assert out.is_error and "more than 5 redirects" in out.content


def test_webfetch_caps_a_large_page(server: str, workspace: Path) -> None:
    limits = Limits(fetch_bytes=10_000)
    ctx = ToolContext(workspace=workspace, fetch_private=True, limits=limits)
    out = WebFetch().run({"url": f"{server}/big"}, ctx)
    assert not out.is_error
    assert "[truncated: the page is over 10000 bytes]" in out.content
    assert len(out.content) < 10_200


def test_webfetch_gives_up_at_its_time_limit(server: str, workspace: Path) -> None:
    ctx = ToolContext(workspace=workspace, fetch_private=True, limits=Limits(fetch_timeout=0.5))
    started = time.monotonic()
    out = WebFetch().run({"url": f"{server}/slow"}, ctx)
    assert out.is_error and "ReadTimeout" in out.content
    assert time.monotonic() - started < 2


def test_webfetch_does_not_show_binary_content(server: str, local: ToolContext) -> None:
    out = WebFetch().run({"url": f"{server}/image"}, local)
    assert out.is_error and "image/png" in out.content and "PNG" not in out.content


def test_an_http_error_status_is_an_error_result(server: str, local: ToolContext) -> None:
    out = WebFetch().run({"url": f"{server}/missing"}, local)
    assert out.is_error and "Status: 404" in out.content and "no such page" in out.content
