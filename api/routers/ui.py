"""/ui: the web dashboard, static files from api/ui/ (no build step, nothing from elsewhere).

The page calls the JSON API with the key the user signs in with (kept in the tab's
sessionStorage, sent as `Authorization: Bearer`): these routes need no authentication, they
only serve the app. Every response carries a strict Content-Security-Policy: scripts, styles
and requests from this origin only, no inline script, no framing."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.errors import ApiError
from contract import ErrorCode

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",  # small files: revalidated, so an upgrade shows at once
}

router = APIRouter(prefix="/ui", include_in_schema=False)


def _files() -> dict[str, Path]:
    """The files the dashboard may serve: those of api/ui/ with a known type, by name. A name
    that is not a key here (a path, a dotfile, anything else) is a 404."""
    if not UI_DIR.is_dir():
        return {}
    return {p.name: p for p in UI_DIR.iterdir() if p.is_file() and p.suffix in MEDIA_TYPES}


FILES = _files()


def _serve(name: str) -> FileResponse:
    path = FILES.get(name)
    if path is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"no file {name!r} in the dashboard")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=SECURITY_HEADERS)


@router.get("")
@router.get("/")
def index() -> FileResponse:
    """The dashboard's one page; it routes with location.hash (#/jobs, #/jobs/<id>)."""
    return _serve("index.html")


@router.get("/{name}")
def asset(name: str) -> FileResponse:
    return _serve(name)
