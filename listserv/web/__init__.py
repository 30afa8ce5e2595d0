"""The HTTP edge: a Starlette app served by uvicorn in the server's event loop.

app.py builds it (the route table, app.state, headers, error pages); the endpoints are
module-level functions in archive.py, exports.py, access.py and member.py, and what
they share is in pages.py.
"""

from listserv.web.app import make_app

__all__ = ["make_app"]
