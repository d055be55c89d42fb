"""Start-up fails loudly, pages never do.

A bad setting stops an ASGI server through ``lifespan.startup.failed`` with the setting's name
and fix (real uvicorn and hypercorn processes serving the example shop); under a server that
runs no lifespan, every request passes through to the app untouched and the error is logged
once. (Flask fails in ``init_app``: test_flask.py; Django in its checks: test_django.py.)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.web import BROWSER
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from capi_bridge.starlette import CapiBridgeMiddleware, identify, track

ROOT = Path(__file__).resolve().parents[1]
PAGE = "<html><head><title>t</title></head><body>shop</body></html>"


def environment(**changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPI_BRIDGE_")}
    env.update(
        CAPI_BRIDGE_ACCESS_TOKEN="test-token",
        CAPI_BRIDGE_SECRET_KEY="startup-tests-secret-key-0123456789",
    )
    for key, value in changes.items():
        if value is not None:
            env[key] = value
    return env


def serve(tmp_path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    env = environment(CAPI_BRIDGE_OUTBOX_PATH=str(tmp_path / "outbox.sqlite3"))
    return subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,  # a server that did not stop would be the failure this test exists for
    )


@pytest.mark.parametrize("lifespan", ["auto", "on"])
def test_uvicorn_exits_non_zero_naming_the_missing_pixel_id(tmp_path: Path, lifespan: str) -> None:
    done = serve(
        tmp_path, "uvicorn", "examples.starlette_app:app", "--port", "0", "--lifespan", lifespan
    )
    assert done.returncode != 0
    assert "CAPI_BRIDGE_PIXEL_ID" in done.stderr and "Fix:" in done.stderr
    assert "lifespan' protocol appears unsupported" not in done.stderr


def test_hypercorn_stops_naming_the_missing_pixel_id(tmp_path: Path) -> None:
    # One process (--workers 0): hypercorn's worker supervisor reports 0 for a failed worker
    # whatever the cause (pgjones/hypercorn#269); the worker itself stops as it must.
    done = serve(
        tmp_path,
        "hypercorn",
        "examples.starlette_app:app",
        "--bind",
        "127.0.0.1:0",
        "--workers",
        "0",
    )
    assert done.returncode != 0
    assert "CAPI_BRIDGE_PIXEL_ID" in done.stderr


async def home(request: Request) -> Response:
    return HTMLResponse(PAGE)


async def pay(request: Request) -> Response:
    identify(request, em="jane@example.com")
    return JSONResponse({"event_id": await track(request, "Purchase")})


def test_without_a_lifespan_requests_pass_through_and_the_error_is_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for key, value in environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CAPI_BRIDGE_PIXEL_ID", raising=False)
    app = Starlette(
        routes=[Route("/", home), Route("/pay", pay, methods=["POST"])],
        middleware=[Middleware(CapiBridgeMiddleware)],
    )
    client = TestClient(app)  # not entered: no lifespan, like a server that runs none
    page = client.get("/", headers=BROWSER)
    assert page.status_code == 200 and page.text == PAGE  # untouched
    paid = client.post("/pay", headers=BROWSER)
    assert paid.status_code == 200 and paid.json()["event_id"]  # the checkout still works
    errors = [r for r in caplog.records if r.levelname == "ERROR" and r.name == "capi_bridge.asgi"]
    assert len(errors) == 1 and "CAPI_BRIDGE_PIXEL_ID" in errors[0].getMessage()


def test_an_outbox_in_a_missing_folder_fails_the_start_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in environment(
        CAPI_BRIDGE_PIXEL_ID="1234567890",
        CAPI_BRIDGE_OUTBOX_PATH=str(tmp_path / "missing" / "outbox.sqlite3"),
    ).items():
        monkeypatch.setenv(key, value)
    middleware = CapiBridgeMiddleware(home)  # type: ignore[arg-type]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(middleware({"type": "lifespan"}, receive, send))
    [failed] = sent
    assert failed["type"] == "lifespan.startup.failed"
    assert "CAPI_BRIDGE_OUTBOX_PATH" in failed["message"] and "Fix:" in failed["message"]
