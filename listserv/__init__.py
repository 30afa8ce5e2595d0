"""listserv: a mailing-list server."""
