"""The HTTP server process: a gunicorn worker that admits only complete heads, body
admission caps, the access log, and the server's own JSON refusals."""
