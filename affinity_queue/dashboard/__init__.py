"""The dashboard: a server-rendered ASGI app to mount in a FastAPI app.

``app.mount("/queues", aq.dashboard(auth=require_admin))``. Needs the ``dashboard`` extra
(Jinja2). Every asset is served by the app itself, so it works offline and behind a firewall.
"""

from .app import dashboard

__all__ = ["dashboard"]
