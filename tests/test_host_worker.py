"""``delivery="process"`` (what ``auto`` means with SQLite): the app's processes start, share
and let go one delivery process per outbox per host (:mod:`capi_bridge.delivery.host_worker`).

Real processes and real locks: the delivery process is ``python -m capi_bridge.cli worker
--managed`` started by the Bridge, sending to the fake Graph server; app processes are this
test process or scripts in subprocesses. Waits are conditions with deadlines, never sleeps.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.delivery_worker import make_event
from helpers.waiting import until

from capi_bridge import settings as settings_module
from capi_bridge.bridge import Bridge
from capi_bridge.cli_worker import serve
from capi_bridge.delivery import host_worker
from capi_bridge.delivery.host_worker import Child, WorkerTender, delivery_pid, worker_running
from capi_bridge.errors import ConfigError
from capi_bridge.settings import Settings
from capi_bridge.testing import FakeGraph


def app_script(
    tmp_path: Path, fake_graph: FakeGraph, outbox_path: str, body: str, **settings: object
) -> tuple[list[str], dict[str, str]]:
    """An app process as a script (``delivery="process"``, ``body`` run after its Bridge is
    made): the command that runs it and its environment (the test helpers importable)."""
    values = {"graph_url": fake_graph.url, "outbox_path": outbox_path, **settings}
    script = tmp_path / "app.py"
    script.write_text(
        "import sys\n"
        "from capi_bridge.bridge import Bridge\n"
        "from capi_bridge.settings import Settings\n"
        "from helpers.delivery_worker import make_event\n"
        'bridge = Bridge(Settings(pixel_id="1234567890", access_token="test-token",'
        f' linger=0.02, delivery="process", **{values!r}))\n' + textwrap.dedent(body)
    )
    helpers = str(Path(__file__).parent)
    path = os.pathsep.join([helpers, os.environ.get("PYTHONPATH", "")])
    return [sys.executable, str(script)], {**os.environ, "PYTHONPATH": path}


def delivered_ids(fake_graph: FakeGraph) -> list[str]:
    return sorted(str(e["event_id"]) for e in fake_graph.events)


def worker_child(bridge: Bridge) -> Child:
    tender = bridge._tender
    assert tender is not None and tender._child is not None
    return tender._child


def test_auto_is_a_process_with_sqlite_and_threads_with_postgresql(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings_module, "AUTO_DELIVERY", "process")  # the suite sets thread
    sqlite = Settings(pixel_id="1", access_token="t", outbox_path="o.sqlite3")
    assert sqlite.delivery == "auto" and sqlite.delivery_mode == "process"
    pg = Settings(pixel_id="1", access_token="t", outbox_url="postgresql://db/shop")
    assert pg.delivery_mode == "thread"
    for mode in ("thread", "worker"):
        assert Settings(pixel_id="1", access_token="t", delivery=mode).delivery_mode == mode


def test_process_needs_a_sqlite_outbox_and_a_known_name_is_required() -> None:
    with pytest.raises(ConfigError, match=r"delivery.*SQLite outbox.*use worker"):
        Settings(pixel_id="1", access_token="t", delivery="process", outbox_url="postgresql://db/x")
    with pytest.raises(ConfigError, match="'proces' is not auto, process, thread or worker"):
        Settings(pixel_id="1", access_token="t", delivery="proces")


def test_the_app_stores_a_process_of_its_own_delivers_and_leaves_with_the_app(
    make_bridge: Callable[..., Bridge], fake_graph: FakeGraph
) -> None:
    app = make_bridge(delivery="process")
    ids = app.enqueue_many(make_event(i) for i in range(30))
    ids.append(app.enqueue(make_event(30)))
    dispatcher = app._dispatcher
    assert dispatcher is not None and not dispatcher.delivers  # this process only stores
    child = worker_child(app)
    assert app.flush(30)  # the delivery process's deliveries settle our rows
    assert delivered_ids(fake_graph) == sorted(ids)
    path = app.settings.outbox_path
    assert path is not None and worker_running(path) and delivery_pid(path) == child.pid
    assert app.close(0) is True
    assert child.wait(30) == 0  # no app process left, nothing left to send: it goes
    assert not worker_running(path) and delivery_pid(path) is None


def test_its_settings_travel_on_a_pipe_never_in_its_command_line_or_environment(
    make_bridge: Callable[..., Bridge],
) -> None:
    app = make_bridge(delivery="process", access_token="secret-token-of-the-shop")
    app.enqueue(make_event(1))
    child = worker_child(app)
    until(
        lambda: worker_running(str(app.settings.outbox_path)),
        timeout=30,
        what="the delivery process never took its lock",
    )
    for name in ("cmdline", "environ"):
        assert b"secret-token-of-the-shop" not in Path(f"/proc/{child.pid}/{name}").read_bytes()
    assert b"--managed" in Path(f"/proc/{child.pid}/cmdline").read_bytes()


@pytest.mark.parametrize("close_timeout", [600, 0])
def test_a_script_that_stores_and_ends_at_once_has_its_events_sent(
    fake_graph: FakeGraph, outbox_path: str, tmp_path: Path, close_timeout: int
) -> None:
    """A script enqueues and ends: no flush, no close. Its exit waits for its own events, as
    with a thread (``close_timeout``: a container stopping with the app takes the delivery
    process along); with ``close_timeout=0`` it waits for nothing, and the delivery process
    sends them after it is gone. Either way the delivery process then goes too."""
    command, env = app_script(
        tmp_path,
        fake_graph,
        outbox_path,
        'bridge.enqueue_many(make_event(i, "gone") for i in range(20))\n',
        close_timeout=close_timeout,
    )
    subprocess.run(command, env=env, check=True, timeout=60)
    if close_timeout:
        assert len(fake_graph.events) == 20  # sent before the script's exit returned
    until(
        lambda: len(fake_graph.events) == 20,
        timeout=30,
        what="the events of the process that exited were not delivered",
    )
    until(
        lambda: not worker_running(outbox_path),
        timeout=30,
        what="the delivery process stayed after the app had gone",
    )
    assert delivered_ids(fake_graph) == sorted(f"gone-{i}" for i in range(20))


def test_app_processes_that_exit_at_once_share_one_process_and_nothing_is_sent_twice(
    fake_graph: FakeGraph, outbox_path: str
) -> None:
    """Three app processes store 1,500 events each, 300 of them the same in all three, and
    exit without close(): each exit waits for its own events, sent by the one process."""
    script = Path(__file__).parent / "helpers" / "delivery_worker.py"
    env = dict(os.environ, CAPI_BRIDGE_DELIVERY="process")
    args = [sys.executable, str(script), "produce", outbox_path, fake_graph.url]
    apps = [subprocess.Popen([*args, f"w{n}", "1500", "300"], env=env) for n in range(3)]
    assert [app.wait(60) for app in apps] == [0, 0, 0]
    expected = {f"w{n}-{i}" for n in range(3) for i in range(1500)}
    expected |= {f"shared-{i}" for i in range(300)}
    assert {str(e["event_id"]) for e in fake_graph.events} == expected  # before they exited
    until(lambda: not worker_running(outbox_path), timeout=60, what="the process stayed")
    sent = [str(e["event_id"]) for e in fake_graph.events]
    assert set(sent) == expected and len(sent) == len(expected)  # each once


GUNICORN_APP = """
import os
from capi_bridge.bridge import Bridge
from capi_bridge.settings import Settings
from helpers.delivery_worker import make_event

bridge = Bridge(Settings.from_env())  # --preload: built in the master, before the fork


def app(environ, start_response):
    bridge.enqueue(make_event(int(environ["QUERY_STRING"]), "g"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
"""


GUNICORN_CONF = """
import os


def post_worker_init(worker):  # every worker stores one event: each is an app process
    from shop import bridge, make_event

    bridge.enqueue(make_event(0, f"boot{os.getpid()}"))
"""


def managed_processes_in(folder: Path) -> list[int]:
    """Delivery processes started from ``folder`` (their working directory, inherited)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if b"worker\0--managed" in cmdline and cwd == str(folder):
            found.append(int(entry.name))
    return found


def test_gunicorn_workers_share_one_delivery_process_which_outlives_them(
    fake_graph: FakeGraph, outbox_path: str, tmp_path: Path
) -> None:
    """The real default (auto) under a pre-fork server: three gunicorn workers of a Bridge
    built with --preload each store (one event as they boot, then requests); one delivery
    process sends; after SIGTERM it sends what is left and goes."""
    (tmp_path / "shop.py").write_text(GUNICORN_APP)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    helpers = str(Path(__file__).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPI_BRIDGE_")}
    env |= {
        "PYTHONPATH": os.pathsep.join([helpers, os.environ.get("PYTHONPATH", "")]),
        "CAPI_BRIDGE_PIXEL_ID": "1234567890",
        "CAPI_BRIDGE_ACCESS_TOKEN": "test-token",
        "CAPI_BRIDGE_GRAPH_URL": fake_graph.url,
        "CAPI_BRIDGE_OUTBOX_PATH": outbox_path,
        "CAPI_BRIDGE_LINGER": "0.02",
    }
    (tmp_path / "conf.py").write_text(GUNICORN_CONF)
    args = ["-w", "3", "--preload", "-c", "conf.py", "-b", f"127.0.0.1:{port}", "shop:app"]
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", *args],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        until(lambda: _answers(url), timeout=30, what="gunicorn never answered")
        pids = {_get(f"{url}?{i}") for i in range(60)}
        until(
            lambda: len(fake_graph.events) >= 63,
            timeout=30,
            what="the workers' events were not all delivered",
        )
        assert len(managed_processes_in(tmp_path)) == 1  # three workers, one process
        assert delivery_pid(outbox_path) in managed_processes_in(tmp_path)
        assert os.getpid() not in pids
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=60)
    assert server.returncode == 0, stderr.decode()
    until(lambda: not managed_processes_in(tmp_path), timeout=30, what="it stayed behind")
    sent = [str(e["event_id"]) for e in fake_graph.events]
    assert sorted(e for e in sent if e.startswith("g-")) == sorted(f"g-{i}" for i in range(60))
    assert len([e for e in sent if e.startswith("boot")]) == 3 and len(sent) == 63  # once
    assert b"ERROR" not in stderr and b"Traceback" not in stderr


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "?0", timeout=5).read()
    except OSError:
        return False
    return True


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return int(reply.read())


def test_once_its_starter_is_gone_the_next_app_process_starts_one_with_its_own_settings(
    make_bridge: Callable[..., Bridge], fake_graph: FakeGraph, outbox_path: str, tmp_path: Path
) -> None:
    """A rolling restart: the old deploy's process starts the delivery process, the new
    deploy's joins, the old one goes. The outbox is never without an app process, yet the
    new deploy's settings (here its Graph URL; a rotated token alike) take over."""
    body = """
        bridge.enqueue(make_event(1, "old"))
        assert bridge.flush(30)
        print("ready", flush=True)
        sys.stdin.readline()
    """
    command, env = app_script(tmp_path, fake_graph, outbox_path, body)
    old = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert old.stdout is not None and old.stdin is not None
    assert old.stdout.readline() == b"ready\n"
    first = delivery_pid(outbox_path)
    with FakeGraph() as new_graph:
        new = make_bridge(delivery="process", graph_url=new_graph.url)
        new.enqueue(make_event(2, "new"))
        assert new.flush(30)  # sent by the old deploy's delivery process, its settings
        assert [e["event_id"] for e in fake_graph.events] == ["old-1", "new-2"]
        old.stdin.close()
        assert old.wait(30) == 0
        old.stdout.close()
        until(
            lambda: delivery_pid(outbox_path) not in (None, first),
            timeout=30,
            what="no delivery process of the new deploy's took over",
        )
        new.enqueue(make_event(3, "new"))
        assert new.flush(30)
        assert [e["event_id"] for e in new_graph.events] == ["new-3"]


def test_two_app_processes_share_one_delivery_process(
    make_bridge: Callable[..., Bridge], fake_graph: FakeGraph
) -> None:
    """Two Bridges on one outbox (as two gunicorn workers would be): one delivery process,
    which stays while either remains and leaves after both."""
    first = make_bridge(delivery="process")
    first.enqueue(make_event(1, "first"))
    child = worker_child(first)
    path = str(first.settings.outbox_path)
    until(lambda: worker_running(path), timeout=30, what="no delivery process took its lock")
    second = make_bridge(delivery="process")
    second.enqueue(make_event(2, "second"))
    assert second._tender is not None and second._tender._child is None  # it found one
    assert first.flush(30) and second.flush(30)
    first.close(0)
    assert second.flush(30) is True and child.poll() is None  # still here for the second
    second.enqueue(make_event(3, "second"))
    assert second.flush(30)
    second.close(0)
    assert child.wait(30) == 0
    assert delivered_ids(fake_graph) == ["first-1", "second-2", "second-3"]


def test_a_delivery_process_that_dies_is_replaced_and_nothing_is_lost(
    make_bridge: Callable[..., Bridge], fake_graph: FakeGraph
) -> None:
    app = make_bridge(delivery="process")
    app.enqueue(make_event(1))
    assert app.flush(30)
    child = worker_child(app)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    app.enqueue(make_event(2))  # stored while no process delivers
    assert app.flush(30)  # the next idle pass (within a second) starts another
    assert delivered_ids(fake_graph) == ["ev-1", "ev-2"]
    assert worker_child(app).pid != child.pid


def test_a_site_run_worker_holds_the_lock_and_the_app_starts_none(
    make_bridge: Callable[..., Bridge],
    delivery_settings: Callable[..., Settings],
    fake_graph: FakeGraph,
) -> None:
    stop = threading.Event()
    ready = threading.Event()
    runner = threading.Thread(
        target=serve, args=(delivery_settings(delivery="worker"), stop, lambda _: ready.set())
    )
    runner.start()
    try:
        assert ready.wait(30)
        app = make_bridge(delivery="process")
        app.enqueue(make_event(1))
        assert app.flush(30)
        assert app._tender is not None and app._tender._child is None
        assert delivered_ids(fake_graph) == ["ev-1"]
    finally:
        stop.set()
        runner.join(30)


@pytest.mark.parametrize(
    ("executable", "why"),
    [
        ("/nonexistent/python3", "No such file"),
        ("/usr/local/bin/uwsgi", "(/usr/local/bin/uwsgi) is not a Python to start"),
        ("failing/python", "it exited with status 1 3 times in a row"),
    ],
)
def test_a_delivery_process_that_cannot_start_leaves_delivery_to_a_thread(
    make_bridge: Callable[..., Bridge],
    fake_graph: FakeGraph,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    executable: str,
    why: str,
) -> None:
    """No interpreter to start (an OSError), an executable that is not Python (uWSGI's
    sys.executable is uWSGI), or one that fails at once (exit status 1, three times in a
    row): the app process delivers in its own thread, and says why."""
    if executable.startswith("failing/"):
        script = tmp_path / executable
        script.parent.mkdir()
        script.write_text("#!/bin/sh\nexit 1\n")
        script.chmod(0o755)
        executable = str(script)
    monkeypatch.setattr(host_worker.sys, "executable", executable)
    app = make_bridge(delivery="process")
    dispatcher = app._running()
    assert dispatcher is not None
    dispatcher.idle_poll = 0.05  # look again soon after each failed start
    app.enqueue(make_event(1))
    assert app.flush(30)
    assert dispatcher.delivers and delivered_ids(fake_graph) == ["ev-1"]
    assert why in caplog.text
    assert "delivers in a thread instead (delivery=thread says so)" in caplog.text
    assert all(
        record.levelname == "WARNING" for record in caplog.records if "thread" in record.message
    )


def test_lock_files_the_folder_refuses_leave_delivery_to_a_thread(
    make_bridge: Callable[..., Bridge],
    fake_graph: FakeGraph,
    outbox_path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    os.mkdir(outbox_path + "-clients.lock")  # cannot be opened as a file
    app = make_bridge(delivery="process")
    app.enqueue(make_event(1))
    assert app.flush(30) and delivered_ids(fake_graph) == ["ev-1"]
    assert app._tender is None and app._dispatcher is not None and app._dispatcher.delivers
    assert "clients.lock" in caplog.text and "delivers in a thread instead" in caplog.text


def test_a_worker_lock_it_may_not_open_leaves_delivery_to_a_thread_and_pages_unharmed(
    make_bridge: Callable[..., Bridge],
    fake_graph: FakeGraph,
    outbox_path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The clients lock opens but the worker lock does not (a file of another user's, say):
    the first event still returns (the request path never raises for it), and the process
    delivers in its own thread."""
    os.mkdir(outbox_path + "-worker.lock")  # opening it for writing fails: IsADirectoryError
    app = make_bridge(delivery="process")
    app.enqueue(make_event(1))
    assert app.flush(30) and delivered_ids(fake_graph) == ["ev-1"]
    assert app._dispatcher is not None and app._dispatcher.delivers
    assert "worker.lock" in caplog.text and "delivers in a thread instead" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_delivery_process_whose_outbox_folder_is_deleted_stops(
    make_bridge: Callable[..., Bridge], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A demo's temporary folder removed under a running app: the delivery process does not
    stay behind for ever, and the app process says nothing at ERROR level about it."""
    folder = tmp_path / "shop"
    folder.mkdir()
    app = make_bridge(delivery="process", outbox_path=str(folder / "outbox.sqlite3"))
    app.enqueue(make_event(1))
    assert app.flush(30)
    child = worker_child(app)
    shutil.rmtree(folder)
    assert child.wait(30) == 0
    dispatcher = app._dispatcher
    assert dispatcher is not None and dispatcher.tend is not None and dispatcher.tend()
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_the_tender_of_a_closed_bridge_starts_nothing(outbox_path: str) -> None:
    tender = WorkerTender(
        Settings(pixel_id="1", access_token="t", outbox_path=outbox_path, delivery="process")
    )
    tender.close()
    assert tender.tend() is True and tender._child is None
