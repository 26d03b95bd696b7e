"""``WebFetch``: a page's text by HTTP(S) GET, size-capped and time-limited.

Loopback, private and link-local addresses are refused unless the context
allows them (``fetch_private``), so a model cannot reach the services next to
the agent (Redis, Vault, the API) through it; redirects are followed by hand
(at most ``MAX_REDIRECTS``) so each hop is checked the same way.
"""

from __future__ import annotations

import ipaddress
import socket
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urljoin, urlsplit

from orchestra_cli.tools.base import Args, BuiltinTool, ToolContext, ToolInputError, ToolOutput

if TYPE_CHECKING:
    import httpx

MAX_REDIRECTS = 5
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/xhtml", "+json", "+xml")
_BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "section"}


class _Text(HTMLParser):
    """The readable text of an HTML page: no scripts, styles or tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "noscript", "template"):
            self._skip += 1
        elif tag in _BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "noscript", "template"):
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self.parts).splitlines())
        return "\n".join(line for line in lines if line)


def html_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    parser.close()
    return parser.text()


def check_url(url: str, *, private_ok: bool) -> None:
    """Refuse what is not http(s), and (unless ``private_ok``) hosts on private networks."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ToolInputError(f"{url!r} is not an http(s) URL")
    if private_ok:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise ToolInputError(f"cannot resolve {parts.hostname}: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise ToolInputError(
                f"{parts.hostname} is a loopback or private address ({address}); WebFetch "
                "reaches only public hosts"
            )


class WebFetch(BuiltinTool):
    name = "WebFetch"
    description = (
        "Fetch a web page (http or https GET) and return its text (HTML reduced to text). "
        "Large pages are cut; only public hosts can be reached."
    )
    input_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "url": {"type": "string", "format": "uri", "description": "The URL to fetch"},
            "prompt": {
                "type": "string",
                "description": "What you are looking for in the page (the text is returned whole)",
            },
        },
        "required": ["url"],
        "additionalProperties": False,
    }
    idempotent = True
    waits = True

    def execute(self, args: Args, ctx: ToolContext) -> ToolOutput:
        import httpx  # the anthropic SDK's HTTP client; only a fetch pays its import

        url = args.text("url")
        timeout = ctx.remaining(ctx.limits.fetch_timeout)
        if timeout <= 0:
            raise ToolInputError("the task's time is up; nothing was fetched")
        try:
            with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
                return self._fetch(client, url, ctx)
        except httpx.HTTPError as exc:
            raise ToolInputError(f"fetching {url} failed: {type(exc).__name__}: {exc}") from None

    def _fetch(self, client: httpx.Client, url: str, ctx: ToolContext) -> ToolOutput:
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url, private_ok=ctx.fetch_private)
            with client.stream("GET", url, headers={"user-agent": "orchestra-webfetch"}) as reply:
                location = reply.headers.get("location")
                if reply.is_redirect and location:
                    url = urljoin(url, location)
                    continue
                body, cut = self._body(reply, ctx)
                return self._render(url, reply, body, cut)
        raise ToolInputError(f"more than {MAX_REDIRECTS} redirects; stopped at {url}")

    @staticmethod
    def _body(reply: httpx.Response, ctx: ToolContext) -> tuple[bytes, bool]:
        most = ctx.limits.fetch_bytes
        data = bytearray()
        for chunk in reply.iter_bytes():
            ctx.check_cancel()
            data += chunk
            if len(data) > most:
                return bytes(data[:most]), True
        return bytes(data), False

    @staticmethod
    def _render(url: str, reply: httpx.Response, body: bytes, cut: bool) -> ToolOutput:
        kind = reply.headers.get("content-type", "").lower()
        if kind and not any(t in kind for t in TEXT_TYPES):
            raise ToolInputError(f"{url} is {kind} ({len(body)} bytes), not text; not shown")
        text = body.decode(reply.encoding or "utf-8", errors="replace")
        if "html" in kind or (not kind and "<html" in text[:1000].lower()):
            text = html_text(text)
        if cut:
            text += f"\n[truncated: the page is over {len(body)} bytes]"
        head = f"URL: {url}\nStatus: {reply.status_code}\n\n"
        return ToolOutput(head + text, is_error=reply.status_code >= 400)
