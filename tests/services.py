"""Real local services for tests: an S3 endpoint (moto's server mode, over HTTP) and a TCP
proxy in front of any endpoint that a test can take down and bring back (fault tests).

Nothing here patches a client: boto3, DVC and MLflow talk HTTP to these processes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples called ``name`` in a Prometheus exposition whose labels include
    ``labels`` (None when none does): read with prometheus_client's own parser, so neither the
    label order nor the float format of a release matters."""
    from prometheus_client.parser import text_string_to_metric_families

    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    return sum(values) if values else None


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer in {timeout}s") from None
            time.sleep(0.3)


class MlflowServer:
    """``mlflow server`` on SQLite with proxied artifacts, on a free loopback port."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "mlflow-server.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
                 "--artifacts-destination", (folder / "artifacts").as_uri(), "--serve-artifacts"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                # as the profile and compose run it: without MLflow's job runner (unused here)
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )  # fmt: skip
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"mlflow server did not start: {self.log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.5)

    def stop(self) -> None:
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


class MotoServer:
    """``moto_server`` on a free loopback port; state lives in its memory."""

    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **(extra_env or {})}
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_http(f"{self.url}/moto-api/")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class FaultProxy:
    """A TCP proxy on a fixed loopback port. ``down()``: every connection is accepted and
    closed at once (an endpoint that stopped answering; ``dropped`` counts the attempts);
    ``hang()``: connections are accepted and never answered, and established ones stall (a
    server that froze, or a firewall that drops packets: the client's timeouts must end the wait); ``up()``:
    connections are forwarded to the upstream again."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.is_down = False
        self.is_hanging = False
        self.held: list[socket.socket] = []
        self.dropped = 0
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def down(self) -> None:
        self.dropped = 0
        self.is_down = True

    def hang(self) -> None:
        self.dropped = 0
        self.is_hanging = True

    def up(self) -> None:
        self.is_down = self.is_hanging = False
        for sock in self.held:
            with contextlib.suppress(OSError):
                sock.close()
        self.held.clear()

    def close(self) -> None:
        self._closing = True
        self.listener.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.is_hanging:
                self.dropped += 1
                self.held.append(client)  # accepted, never answered
                continue
            if self.is_down:
                self.dropped += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # RST: the client sees the connection reset
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while (
                    self.is_hanging and not self._closing
                ):  # a frozen server: established connections stall too
                    time.sleep(0.05)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
