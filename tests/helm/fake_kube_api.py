"""A fake Kubernetes API server: just enough of the real HTTP API for Helm's `lookup` of one
Secret (API discovery of the core group, then GET of the object). No API server runs here; Helm
talks to this one over real HTTP through an ordinary kubeconfig."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CORE_RESOURCES = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": "v1",
    "resources": [{"name": "secrets", "singularName": "secret", "namespaced": True,
                   "kind": "Secret", "verbs": ["get", "list"]}],
}


class FakeKubeAPI:
    """Serves the Secrets in `secrets` (namespace, name) -> object; 404 for anything else."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?")[0]
                fake.requests.append(path)
                parts = path.strip("/").split("/")
                if path == "/api/v1":
                    self._reply(200, CORE_RESOURCES)
                elif parts[:2] == ["api", "v1"] and len(parts) == 6 and parts[4] == "secrets":
                    secret = fake.secrets.get((parts[3], parts[5]))
                    if secret is None:
                        self._reply(404, not_found("secrets", parts[5]))
                    else:
                        self._reply(200, secret)
                else:
                    self._reply(404, not_found("paths", path))

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeKubeAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def kubeconfig(self) -> str:
        """A kubeconfig that points a client at this server."""
        url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return (
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: fake, cluster: {{server: '{url}'}}}}]\n"
            "users: [{name: fake, user: {token: fake}}]\n"
            "contexts: [{name: fake, context: {cluster: fake, user: fake}}]\n"
            "current-context: fake\n"
        )


def not_found(resource: str, name: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
            "code": 404, "message": f'{resource} "{name}" not found',
            "details": {"name": name, "kind": resource}}
