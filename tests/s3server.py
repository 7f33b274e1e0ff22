"""A real S3-compatible server for tests: moto's server in a subprocess on 127.0.0.1.

Production code reaches it over HTTP exactly as it would reach MinIO or AWS, so these tests
exercise the real clients (Arrow's native S3 client and s3fs/botocore), not mocks.

    server = MotoS3Server()
    server.start()            # picks a free port on first start, waits until it answers HTTP
    server.endpoint_url       # "http://127.0.0.1:<port>"
    server.stop()             # kill it (e.g. to test what a client does when S3 goes away)
    server.start()            # again on the *same* port; moto's state (buckets) is lost
    server.close()            # stop for good and remove the log directory

or as a context manager (``with MotoS3Server() as server: ...``).

``DurableS3Server`` is the same server, except that ``stop()`` closes only its listening socket
(clients get "connection refused", as when a real S3 endpoint goes away) and ``start()`` opens
it again on the same port with every bucket and object still there, as a real, durable object
store comes back: the process holding moto's state lives on between the two. The server's output goes to
``server.log_path`` (a file, never a pipe that could fill up and block it); a server that does
not come up raises ``RuntimeError`` quoting the end of that log.
"""
from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

__all__ = ["MotoS3Server", "DurableS3Server", "free_port"]

_LIVE: "set[MotoS3Server]" = set()  # servers to kill at interpreter exit, whatever happened


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the test process dies, even by SIGKILL."""
    try:
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass  # best effort; stop() and the atexit hook still apply


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class MotoS3Server:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None, start_timeout: float = 30.0):
        self.host = host
        self.port = port
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._logdir = tempfile.mkdtemp(prefix="moto-s3-")
        self.log_path = os.path.join(self._logdir, "moto_server.log")

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise RuntimeError("server was never started: no port yet")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "MotoS3Server":
        """Start the server (on the same port as before, if it ran before) and wait for it."""
        if self.running:
            return self
        if self.port is None:
            self.port = free_port(self.host)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
        env["PYTHONUNBUFFERED"] = "1"
        self._log = open(self.log_path, "ab")
        self._log.write(f"--- starting moto server on {self.endpoint_url} ---\n".encode())
        self._log.flush()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        _LIVE.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        delay = 0.05
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"moto server exited with code {self._proc.returncode} before answering; log:\n{self.log_tail()}"
                )
            try:
                # Any HTTP answer (moto's "/" is S3 ListBuckets) means it is up.
                with urllib.request.urlopen(self.endpoint_url + "/", timeout=2):
                    return
            except urllib.error.HTTPError:
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"moto server did not answer on {self.endpoint_url} within {self.start_timeout:.0f}s; "
                    f"log:\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def stop(self) -> None:
        """Kill the server (if running) and wait until it is gone; the port stays reserved."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        _LIVE.discard(self)

    def close(self) -> None:
        """Stop the server and remove its log directory."""
        self.stop()
        shutil.rmtree(self._logdir, ignore_errors=True)

    def log_tail(self, n: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n))
                return f.read().decode(errors="replace")
        except OSError:
            return "<no log>"

    def __enter__(self) -> "MotoS3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"MotoS3Server({self.host}:{self.port}, {state}, log={self.log_path})"


class DurableS3Server(MotoS3Server):
    """A moto S3 server whose data outlives ``stop()``: one subprocess runs moto's threaded
    server and opens or closes its listening socket on "start" / "stop" lines on its stdin."""

    def start(self) -> "DurableS3Server":
        if self._proc is None or self._proc.poll() is not None:
            if self.port is None:
                self.port = free_port(self.host)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
            env["PYTHONUNBUFFERED"] = "1"
            self._log = open(self.log_path, "ab")
            self._proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--durable", self.host, str(self.port)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
            _LIVE.add(self)
            self._expect("listening")
        elif not self.listening:
            self._command("start", "listening")
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    @property
    def listening(self) -> bool:
        return self.running and getattr(self, "_listening", False)

    def stop(self) -> None:
        """Close the listening socket (the data stays); ``start()`` opens it again."""
        if self.running and self.listening:
            self._command("stop", "closed")

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        _LIVE.discard(self)
        shutil.rmtree(self._logdir, ignore_errors=True)

    def _command(self, cmd: str, answer: str) -> None:
        self._proc.stdin.write((cmd + "\n").encode())
        self._proc.stdin.flush()
        self._expect(answer)

    def _expect(self, answer: str) -> None:
        line = self._proc.stdout.readline().decode().strip()
        if line != answer:
            raise RuntimeError(f"durable S3 server said {line!r}, expected {answer!r}; log:\n{self.log_tail()}")
        self._listening = answer == "listening"


def _serve_durable(host: str, port: int) -> None:
    """The subprocess of :class:`DurableS3Server`: moto's threaded server, its listening socket
    opened and closed on command; moto's state is this process's memory."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    import itertools

    server = None
    for cmd in itertools.chain(["start"], sys.stdin):
        cmd = cmd.strip()
        if cmd == "start" and server is None:
            server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
            server.start()
            print("listening", flush=True)
        elif cmd == "stop" and server is not None:
            server.stop()
            server._server.server_close()  # stop() leaves the socket listening: close it
            server = None
            print("closed", flush=True)
        else:
            print(f"ignored {cmd!r}", flush=True)


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server.stop()


if __name__ == "__main__" and sys.argv[1:2] == ["--durable"]:
    _serve_durable(sys.argv[2], int(sys.argv[3]))
