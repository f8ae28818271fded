"""Turning pages and agent output into HTML: templates, safe Markdown, artifacts, security headers.

Agent output is untrusted. Markdown is rendered here, on the server, with raw HTML turned off
(markdown-it escapes every tag), links limited to safe schemes and images off (an image would
fetch another site from the viewer's browser). The page's Content-Security-Policy forbids inline
script besides, so a mistake in one layer is still caught by the other.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nh3
from fastapi import Request, Response
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup

if TYPE_CHECKING:
    from baton.web.session import Viewer

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
TEMPLATES_DIR = HERE / "templates"

#: artifacts larger than this are offered for download instead of shown inline
INLINE_LIMIT = 256 * 1024

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


def _static_version() -> str:
    """A digest of the static files, appended to their URLs so a new release is never stale."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.globals["static_version"] = _static_version()


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable("table").enable("strikethrough")
    md.disable("image")

    def link_open(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        # Agent links open elsewhere and learn nothing about the dashboard.
        tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
        tokens[idx].attrSet("target", "_blank")
        return str(renderer.renderToken(tokens, idx, options, env))

    md.add_render_rule("link_open", link_open)
    return md


_MD = _markdown()


#: what rendered Markdown may contain after nh3 (no img, no style: the CSP forbids both anyway)
SAFE_TAGS = frozenset(
    "a p br hr h1 h2 h3 h4 h5 h6 em strong del s code pre blockquote ul ol li "
    "table thead tbody tr th td".split()
)


def markdown_html(text: str) -> Markup:
    """Markdown to HTML with every raw tag escaped and only http(s)/mailto/relative links kept.

    nh3 (ammonia) then keeps only the tags and attributes Markdown makes: a second, independent
    layer, so a markdown-it option or plugin that let raw HTML or a `javascript:` link through
    would still not reach the page.
    """
    return Markup(
        nh3.clean(
            _MD.render(text),
            tags=set(SAFE_TAGS),
            attributes={"a": {"href", "title"}, "ol": {"start"}, "code": {"class"}},
            url_schemes={"http", "https", "mailto"},
            link_rel="noopener noreferrer nofollow",
            set_tag_attribute_values={"a": {"target": "_blank"}},
        )
    )


def artifact_html(name: str, media_type: str, content: bytes) -> Markup:
    """An artifact shown inline: Markdown rendered, JSON pretty-printed, anything else as text."""
    if len(content) > INLINE_LIMIT:
        return Markup('<p class="muted">{}</p>').format(
            f"{name} is {len(content):,} bytes: too large to show here; download it instead."
        )
    text = content.decode("utf-8", errors="replace")
    kind = media_type.split(";")[0].strip().lower()
    if kind in ("text/markdown", "text/x-markdown") or name.endswith((".md", ".markdown")):
        return Markup('<div class="md">{}</div>').format(markdown_html(text))
    if kind == "application/json" or kind.endswith("+json") or name.endswith(".json"):
        try:
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            pass
        return Markup('<pre class="json">{}</pre>').format(text)
    if kind.startswith("text/") or kind in ("application/x-yaml", "application/yaml"):
        return Markup('<pre class="text">{}</pre>').format(text)
    return Markup('<p class="muted">{}</p>').format(f"{media_type} content: download it to open it.")


def secure(response: Response) -> Response:
    """The headers every dashboard page carries."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def fragment(html: Markup | str, status: int = 200) -> Response:
    """A piece of HTML the page's script inserts (rendered Markdown, an artifact)."""
    return secure(Response(str(html), status_code=status, media_type="text/html; charset=utf-8"))


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    viewer: Viewer | None,
    status: int = 200,
) -> Response:
    """A full page: the template with the viewer, and the security headers."""
    response = templates.TemplateResponse(
        request, template, {"viewer": viewer, **context}, status_code=status
    )
    return secure(response)


__all__ = ["artifact_html", "fragment", "markdown_html", "render", "secure", "templates"]
