"""Security headers on every response of the sink's HTTP server.

The gallery shows post text and user names, which are hostile input. The page renders
them with `textContent` only; the policy below is the second line: scripts and styles
from this origin's files only (nothing inline), Trusted Types so no string can reach an
HTML sink, images from the configured hosts, no framing, no plugins, no form posts.
"""

from __future__ import annotations

from aiohttp import web


def content_security_policy(image_sources: str) -> str:
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' {image_sources}",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
            "trusted-types 'none'",
        )
    )


def security_headers(image_sources: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(image_sources),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    }


def install_security_headers(app: web.Application, image_sources: str) -> None:
    """Add the headers to every response just before it is sent, errors and streams included."""
    headers = security_headers(image_sources)

    async def add_headers(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(headers)

    app.on_response_prepare.append(add_headers)
