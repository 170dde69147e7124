"""Cross-site request protection for the dashboard's actions.

Two independent checks, so that either alone stops a forged POST: the browser's own statement of
where the request came from (``Sec-Fetch-Site``, else ``Origin`` against ``Host``), and a
double-submit token (a random cookie that a page from another site cannot read, echoed in the
form).
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

CSRF_COOKIE = "aq_csrf"
CSRF_FIELD = "csrf"


def csrf_token(request: Request) -> str:
    """The token of this browser, new when it has none (``remember`` sets the cookie)."""
    token = request.cookies.get(CSRF_COOKIE, "")
    return token if len(token) == 32 else secrets.token_hex(16)


def remember(response: Response, token: str, path: str) -> None:
    response.set_cookie(
        CSRF_COOKIE, token, path=path or "/", httponly=True, samesite="strict", secure=False
    )


def cross_site_reason(request: Request, form_token: str) -> str | None:
    """Why this POST must be refused, or None when it came from one of our own pages."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"the request came from another site (Sec-Fetch-Site: {site})"
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        return "the request's Origin is not this dashboard's"
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), form_token.encode()):
        return "the form's token does not match this browser's (reload the page and try again)"
    return None
