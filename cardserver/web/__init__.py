"""The HTTP side: app factory, pages, API, websocket and the security checks they share."""
