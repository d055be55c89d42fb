"""``capi-bridge demo`` as README tells a newcomer to run it: a real process serving the example
shop and the fake Graph API, stopped by a signal. Browser-free: plain HTTP requests are enough to
see the shop carry the pixel snippet pointing at the local fbevents.js stand-in (the example
shops' browser behaviour is covered by test_e2e_shops.py)."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import httpx
import pytest

from capi_bridge.snippet import script_json

READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
STUB = (resources.files("capi_bridge") / "static" / "fbevents-stub.js").read_bytes()


def command() -> list[str]:
    """The ``capi-bridge`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("capi-bridge")
    return [str(script)] if script.exists() else [sys.executable, "-m", "capi_bridge.cli"]


@dataclass
class Demo:
    process: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    out: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None

    def read_until(self, pattern: str, timeout: float = READY_TIMEOUT) -> re.Match[str]:
        """Stdout lines until one matches ``pattern``; fails on exit or after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, "".join(self.out), re.MULTILINE)
            if found:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {pattern!r} within {timeout} s; output: {''.join(self.out)}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"the demo exited; output: {''.join(self.out)}{self.stderr()}")
            self.out.append(line)

    def url(self, label: str) -> str:
        return self.read_until(rf"^  {label} +(http\S+)").group(1)

    def stop(self, signum: int) -> tuple[int, str, str]:
        self.process.send_signal(signum)
        code = self.process.wait(STOP_TIMEOUT)
        self.read_until(r"^capi-bridge demo: stopped")
        return code, "".join(self.out), self.stderr()

    def stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read()


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    """``start(*args) -> Demo``: the command, started in an empty directory; killed if left."""
    started: list[Demo] = []

    def start(*args: str) -> Demo:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAPI_BRIDGE_")}
        env["PYTHONUNBUFFERED"] = "1"
        process = subprocess.Popen(
            [*command(), "demo", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        demo = Demo(process)
        demo.pump = threading.Thread(target=_pump, args=(process, demo.lines), daemon=True)
        demo.pump.start()
        started.append(demo)
        return demo

    yield start
    for demo in started:
        if demo.process.poll() is None:
            demo.process.kill()
        demo.process.wait()
        _close_pipes(demo.process, demo.pump)


def _close_pipes(process: subprocess.Popen[str], pump: threading.Thread | None) -> None:
    """Once the pump has read stdout to its end (the exit closed it): left open, the pipes
    are closed by the garbage collector, whose ResourceWarning then fails another test."""
    if pump is not None:
        pump.join(30)
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


def _pump(process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line)
    lines.put(None)


@pytest.mark.parametrize(
    ("framework", "signum"),
    [
        ("flask", signal.SIGTERM),
        ("starlette", signal.SIGTERM),
        ("django", signal.SIGTERM),
        ("flask", signal.SIGINT),
    ],
    ids=["flask-SIGTERM", "starlette-SIGTERM", "django-SIGTERM", "flask-Ctrl-C"],
)
def test_demo_serves_the_shop_and_stops_cleanly(
    start_demo: Callable[..., Demo], tmp_path: Path, framework: str, signum: int
) -> None:
    demo: Demo = start_demo("--port", "0", "--framework", framework)
    graph = demo.url("fake Graph API")
    stub = demo.url("pixel script")
    shop = demo.url("shop")
    inspector = demo.url("inspector")
    outbox = demo.read_until(r"^  outbox +(\S+)").group(1)
    ready = float(demo.read_until(r"^ready in ([\d.]+) s").group(1))
    demo.read_until(r"Ctrl-C to stop")
    assert ready >= 0  # it says how long start-up took (how fast: benchmarks, not a test)

    assert shop.startswith("http://127.0.0.1:") and shop.endswith("/")
    assert inspector == shop.rstrip("/") + "/capi-bridge/inspector"
    assert stub == graph + "/fbevents.js"
    with httpx.Client(trust_env=False, timeout=5) as client:
        page = client.get(shop)
        script = client.get(stub)
        events = client.get(graph + "/_fake/events")
    assert page.status_code == 200 and "window.capiBridgeConfig=" in page.text
    assert f"'script',{script_json(stub)})" in page.text  # the pixel loads the local stub
    assert "connect.facebook.net" not in page.text
    assert script.status_code == 200 and script.content == STUB
    assert script.headers["content-type"].startswith("text/javascript")
    assert events.json() == {"events": []}
    assert os.path.exists(outbox)

    code, out, err = demo.stop(signum)
    assert code == 0, out + err
    assert "Traceback" not in err and "Traceback" not in out
    assert "stopped; the fake Graph API received" in out
    assert not os.path.exists(outbox)  # the temporary outbox went with the demo
    assert list(tmp_path.iterdir()) == []  # nothing left in the working directory


def test_a_busy_port_fails_with_the_fix(start_demo: Callable[..., Demo]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        demo: Demo = start_demo("--port", str(port))
        code = demo.process.wait(READY_TIMEOUT)
    err = demo.stderr()
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port 0" in err
    assert "Traceback" not in err
