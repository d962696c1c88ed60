"""``/v1/openapi.json`` and the ``/v1/docs`` page, open to anyone, served by the app itself.

The page is Swagger UI from the ``flask-swagger-ui`` package installed with the API (its
``dist`` folder), never a CDN: a screening programme's network may reach nothing else,
and a page that loads scripts from elsewhere would run whatever that host served.
"""

from __future__ import annotations

import json
from importlib.resources import as_file, files
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, send_from_directory, url_for
from markupsafe import escape

from api.docs.spec import TITLE, openapi_document
from api.errors import not_found

# Outside the /v1 blueprint, so its API-key hook does not apply; same URL prefix.
bp = Blueprint("docs", __name__, url_prefix="/v1")

_ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"})
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="{css}">
<link rel="icon" type="image/png" href="{icon}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{bundle}"></script>
<script>
// validatorUrl null: Swagger UI would otherwise send the document to an outside validator.
window.onload = function () {{
  window.ui = SwaggerUIBundle(
    {{url: {spec}, dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null}}
  );
}};
</script>
</body>
</html>
"""


def _dist() -> Path:
    with as_file(files("flask_swagger_ui") / "dist") as path:
        return Path(path)


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI 3.1 document of ``/v1``."""
    document = openapi_document(current_app._get_current_object())  # type: ignore[attr-defined]
    # The server as clients reach it (public origin, any path prefix), built like every
    # URL the API hands out; the document's paths all start with /v1.
    here = url_for("docs.openapi_json", _external=True)
    response = jsonify({**document, "servers": [{"url": here.removesuffix("/v1/openapi.json")}]})
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.get("/docs")
def docs_page() -> Response:
    """Swagger UI over the document."""
    html = _PAGE.format(
        title=escape(TITLE),
        css=url_for("docs.docs_asset", name="swagger-ui.css"),
        icon=url_for("docs.docs_asset", name="favicon-32x32.png"),
        bundle=url_for("docs.docs_asset", name="swagger-ui-bundle.js"),
        spec=json.dumps(url_for("docs.openapi_json")),
    )
    response = Response(html, mimetype="text/html")
    # Scripts and styles from this origin only; the inline start-up script is the one
    # exception, so nothing injected elsewhere could load code from another host.
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:"
    )
    return response


@bp.get("/docs/assets/<name>")
def docs_asset(name: str) -> Response:
    """A Swagger UI file from the installed package (only those the page uses)."""
    if name not in _ASSETS:
        raise not_found("asset")
    return send_from_directory(_dist(), name, max_age=86400)
