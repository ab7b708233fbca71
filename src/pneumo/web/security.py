"""Security defaults on every response, and a same-origin rule for browser posts.

Everything the page needs is served from this origin, so the policy is
``'self'`` only; ``data:`` (the heatmap comes back embedded in JSON) and
``blob:`` (the instant preview of the chosen file) are allowed for images alone.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, request

from .errors import CROSS_ORIGIN

_POLICY_DIRECTIVES = (
    "default-src 'self'",
    "img-src 'self' data: blob:",
    "script-src 'self'",
    "style-src 'self'",
    "connect-src 'self'",
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
)
CONTENT_SECURITY_POLICY = "; ".join(_POLICY_DIRECTIVES)

HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def reject_cross_site_posts() -> None:
    """A page on another site may not make this server spend its CPU on its behalf.

    Browsers say where a request comes from in ``Sec-Fetch-Site``, which scripts
    cannot forge; it is trusted first, because it stays right behind a reverse
    proxy that rewrites ``Host``. Older browsers only send ``Origin``, compared
    with ``Host``. Clients that are not browsers send neither and are let in.
    """
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        if site not in ("same-origin", "none"):
            raise CROSS_ORIGIN()
        return
    origin = request.headers.get("Origin")
    if origin is not None and (origin == "null"
                               or urlsplit(origin).netloc.lower() != request.host.lower()):
        raise CROSS_ORIGIN()


def add_headers(response):
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/api/"):
        # Predictions concern patients: keep them out of shared caches.
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def init_app(app: Flask) -> None:
    app.before_request(reject_cross_site_posts)
    app.after_request(add_headers)
