"""A Flask app on Werkzeug's threaded server, for the memory test of a huge chunked POST
(test_hostile_traffic.py, item 1): ``python body_server.py bridge|greedy OUTBOX``; prints its
port. ``bridge`` mounts capi-bridge (the endpoint answers its own route); ``greedy`` has a view
on the same path read the whole body, as a Flask view would."""

from __future__ import annotations

import sys

from flask import Flask, request
from werkzeug.serving import make_server

from capi_bridge.flask import CapiBridge
from capi_bridge.settings import Settings


def main(mode: str, outbox: str) -> None:
    app = Flask(__name__)
    if mode == "bridge":
        settings = Settings(
            pixel_id="1234567890",
            access_token="test-token",
            secret_key="body-server-secret-key-0123456789abcdef",
            outbox_path=outbox,
            allowed_hosts=("127.0.0.1",),
            graph_url="http://127.0.0.1:9",  # never reached: nothing is accepted
        )
        CapiBridge(app, settings=settings)

    @app.post("/capi-bridge/events")
    def greedy() -> str:
        return str(len(request.get_data()))

    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
