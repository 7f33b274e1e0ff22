"""``ray job submit`` of jobs/rebalance_book.py against a Ray started with ``ray start --head``:
the way a platform team runs the job on a standing cluster."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from s3server import free_port

from rebalancer.generate import GeneratorSettings, generate_book

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def _ray(*args: str) -> list[str]:
    return [os.path.join(BIN, "ray"), *args]


@pytest.fixture
def ray_head():
    """``ray start --head --block`` in its own process group, on free ports and its own temp
    dir, so stopping it touches no other Ray on the machine."""
    gcs, dash, client, agent = free_port(), free_port(), free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="/tmp/rj")  # short: Ray's socket paths must stay under ~100 chars
    # Token authentication, as a production cluster runs it: a token made before the cluster
    # starts, given to the cluster and to the submitting CLI (here through a file of the test's own).
    token_file = os.path.join(temp, "auth_token")
    with open(token_file, "w") as f:
        f.write(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_file)
    proc = subprocess.Popen(
        _ray("start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
             f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
             "--num-cpus=2", "--include-dashboard=true", f"--temp-dir={temp}", "--disable-usage-stats"),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # it answers (401 to a request without the token)
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not come up (exit {proc.poll()})")
            time.sleep(1)
        yield url, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is still there
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_the_book(ray_head, tmp_path):
    url, env = ray_head
    book, out = str(tmp_path / "book"), str(tmp_path / "runs")
    generate_book(GeneratorSettings(accounts=60, seed=3, accounts_per_bucket=30), book)
    cmd = _ray("job", "submit", "--address", url, "--",
               sys.executable, os.path.join(ROOT, "jobs", "rebalance_book.py"),
               "--book", book, "--out", out, "--run-id", "submitted", "--json", "--quiet")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "succeeded" in (r.stdout + r.stderr).lower()
    manifest = json.load(open(f"{out}/submitted/manifest.json"))
    assert manifest["complete"] and manifest["accounts_in"] == manifest["accounts_out"] == 60
    summary = json.load(open(f"{out}/submitted/summary.json"))
    assert summary["complete"] and summary["timings"]["cpus"] == 2  # it ran on the standing cluster
