"""The web dashboard served by `baton serve`: Jinja2 pages, plain JavaScript, no build step."""

from baton.web.views import install

__all__ = ["install"]
