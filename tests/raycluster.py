"""Real Ray clusters on this one machine, for tests that need more than one node.

Every cluster here gets free ports and its own short temp dir, and that temp dir is how its
processes are found and stopped: the GCS, the raylets, the agents and the workers of every node
(worker nodes take the head's temp dir) all name it on their command line or hold a file
under it open (their logs). Nothing here runs ``ray stop``, which would kill every Ray on the
machine, other tests' and other people's.

- :class:`AutoscalingHead`: ``ray start --head --block`` with the autoscaler and the fake
  multi-node provider (what ``ray.cluster_utils.AutoscalingCluster`` starts, without its
  ``ray stop --force``): worker nodes are raylets the autoscaler starts and stops on this
  machine as demand comes and goes.
- :class:`LocalCluster`: ``ray.cluster_utils.Cluster`` (a head and worker nodes the test adds and
  removes), stopped whole however the test ends.
- :func:`processes_of`, :func:`reap`: the live processes of a cluster (by its temp dir), and
  killing what is left of them.
- :func:`start_group`, :func:`stop_group`: a command in its own process group, and stopping
  that group.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

try:  # tests/ is on sys.path under pytest's default "prepend" import mode
    from s3server import free_port
except ImportError:  # tests/ made a package
    from tests.s3server import free_port

__all__ = ["BIN", "Proc", "processes_of", "reap", "short_temp_dir", "ray_env", "gcs_client", "alive_nodes", "start_group",
           "stop_group", "fake_cluster_config", "AutoscalingHead", "LocalCluster"]

BIN = os.path.dirname(sys.executable)
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # per node; Ray's minimum is 75 MiB


# --- processes -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    state: str
    cmdline: str

    def __str__(self) -> str:
        return f"pid {self.pid} (ppid {self.ppid}, pgid {self.pgid}, {self.state}): {self.cmdline[:160]}"


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _proc(pid: int) -> Proc | None:
    try:
        stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
        cmdline = _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return Proc(pid, int(fields[1]), int(fields[2]), fields[0], cmdline)


def _uses(pid: int, roots: tuple[str, ...]) -> bool:
    """Whether the process names one of ``roots`` (dirs) on its command line or holds a file
    under one open. Ray workers rename themselves (``ray::IDLE``, ``ray::shard_task``), which
    overwrites their command line; their log files under the session dir still give them away."""
    named = re.compile("|".join(re.escape(r) for r in roots) + r"(/|\s|$)")
    try:
        if named.search(_read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")):
            return True
        fd_dir = f"/proc/{pid}/fd"
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if any(target == r or target.startswith(r + "/") for r in roots):
                return True
    except OSError:
        return False
    return False


def processes_of(temp_dir: str) -> list[Proc]:
    """Live processes (zombies left out) of the cluster whose temp dir is ``temp_dir``; never
    this process."""
    roots = tuple({temp_dir.rstrip("/"), os.path.realpath(temp_dir)})
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != me and _uses(int(d), roots):
            p = _proc(int(d))
            if p is not None and p.state != "Z":
                out.append(p)
    return out


def reap(temp_dir: str, timeout: float = 20.0) -> list[Proc]:
    """SIGKILL every process still using ``temp_dir`` and wait until none is left; returns those
    found. Raises if some survive ``timeout``."""
    found = processes_of(temp_dir)
    deadline = time.monotonic() + timeout
    left = found
    while left:
        for p in left:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in left:  # our own children: collect them, so they do not stay as zombies
            try:
                os.waitpid(p.pid, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.2)
        left = processes_of(temp_dir)
        if left and time.monotonic() > deadline:
            raise RuntimeError("processes survive SIGKILL:\n" + "\n".join(map(str, left)))
    return found


def short_temp_dir(prefix: str) -> str:
    """A fresh dir directly under /tmp: Ray's socket paths must stay under ~100 characters."""
    return tempfile.mkdtemp(prefix=f"/tmp/{prefix}")


def ray_env(**extra: str) -> dict[str, str]:
    """This process's environment for a Ray process or a driver: no ``RAY_ADDRESS`` (a driver
    joins the cluster it is told), one BLAS thread per process (as the job runs), and Ray's
    token authentication as this process has it (unset here: off, explicitly). Left unset,
    ``ray start`` would turn it on whenever some earlier Ray left a token in ``~/.ray``, and
    this process (which reads the GCS) would be refused."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.update(extra)
    return env


def _term_with_parent() -> None:
    """In the child, before exec: SIGTERM when this (test) process dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass  # best effort: stop_group() still applies


def start_group(cmd: list[str], env: dict[str, str], log_prefix: str) -> subprocess.Popen:
    """``cmd`` in its own process group (session), its output in ``<log_prefix>.out`` and
    ``.err`` (files: a pipe nobody reads could fill up and block it); it gets SIGTERM if this
    process dies first."""
    with open(log_prefix + ".out", "wb") as out, open(log_prefix + ".err", "wb") as err:
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True,
                                preexec_fn=_term_with_parent if sys.platform.startswith("linux") else None)


def stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group of ``proc`` (from :func:`start_group`), SIGKILL what is left
    after ``grace`` seconds, and collect ``proc``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; others of its group may not be: SIGKILL them too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break
    proc.wait(timeout=30)


# --- the GCS's view ------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeView:
    node_id: str
    is_head: bool
    resources: dict


def gcs_client(gcs_address: str):
    """A client of the GCS at ``gcs_address`` (no ``ray.init`` needed)."""
    from ray._raylet import GcsClient

    return GcsClient(address=gcs_address)


def alive_nodes(gcs, timeout: float = 10.0) -> list[NodeView]:
    """Nodes the GCS holds alive; ``gcs``: a :func:`gcs_client` or an address."""
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    if isinstance(gcs, str):
        gcs = gcs_client(gcs)
    infos = gcs.get_all_node_info(timeout=timeout)
    return [NodeView(node_id.hex(), bool(info.is_head_node), dict(info.resources_total))
            for node_id, info in infos.items() if info.state == GcsNodeInfo.GcsNodeState.ALIVE]


def node_ip() -> str:
    import ray._private.services

    return ray._private.services.get_node_ip_address()


# --- the autoscaling cluster ---------------------------------------------------------------

HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head's type
WORKER_TYPE = "ray.worker.cpu"


def fake_cluster_config(gcs_address: str, worker_cpus: int = 1, min_workers: int = 0, max_workers: int = 2,
                        idle_timeout_minutes: float = 0.1, upscaling_speed: float = 1.0) -> dict:
    """A full cluster config for the fake multi-node provider (the fields of Ray's
    ``fake_multi_node/example.yaml``, which the wheel does not ship): a head of no CPUs (tasks
    need worker nodes) and one worker type. ``gcs_address``: the provider's worker nodes join
    it (else they would look for a GCS on port 6379)."""
    return {
        "cluster_name": "fake_multinode",
        "max_workers": max_workers,
        "upscaling_speed": upscaling_speed,
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "auth": {},
        "available_node_types": {
            HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            WORKER_TYPE: {"resources": {"CPU": worker_cpus, "object_store_memory": OBJECT_STORE_BYTES},
                          "node_config": {}, "min_workers": min_workers, "max_workers": max_workers},
        },
        "head_node_type": HEAD_TYPE,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


class AutoscalingHead:
    """``RAY_FAKE_CLUSTER=1 ray start --head --block --autoscaling-config=...`` in its own
    process group, on free ports and its own temp dir. The autoscaler (the head's monitor
    process) starts worker nodes as raylets on this machine; on exit the head's process group
    is stopped, then whatever else still uses the temp dir (the autoscaler's nodes and their
    workers), and the exit fails if anything survives."""

    def __init__(self, worker_cpus: int = 1, max_workers: int = 2, idle_timeout_minutes: float = 0.1,
                 start_timeout: float = 120.0):
        self.worker_cpus, self.max_workers = worker_cpus, max_workers
        self.idle_timeout_minutes, self.start_timeout = idle_timeout_minutes, start_timeout
        self.temp = self.address = self.proc = self._gcs = None
        self.leftovers: list[Proc] = []  # processes that outlived the head's process group

    def __enter__(self) -> "AutoscalingHead":
        self.temp = short_temp_dir("rfa")
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stop()

    def _start(self) -> None:
        ip, port = node_ip(), free_port()
        self.address = f"{ip}:{port}"
        config_path = os.path.join(self.temp, "cluster.yaml")
        with open(config_path, "w") as f:  # JSON is YAML
            json.dump(fake_cluster_config(self.address, self.worker_cpus, 0, self.max_workers,
                                          self.idle_timeout_minutes), f, indent=2)
        env = ray_env(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
        cmd = [os.path.join(BIN, "ray"), "start", "--head", "--block", f"--port={port}", f"--node-ip-address={ip}",
               "--num-cpus=0", f"--object-store-memory={OBJECT_STORE_BYTES}", f"--autoscaling-config={config_path}",
               f"--temp-dir={self.temp}", "--include-dashboard=false", f"--dashboard-port={free_port()}",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--metrics-export-port={free_port()}", "--disable-usage-stats"]
        self.proc = start_group(cmd, env, os.path.join(self.temp, "ray-start"))
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start --head exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self._gcs = self._gcs or gcs_client(self.address)
                if any(n.is_head for n in alive_nodes(self._gcs, timeout=2)) and self.monitor():
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the head did not come up in {self.start_timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.5)

    def _stop(self) -> None:
        self._gcs = None
        if self.proc is not None:
            stop_group(self.proc)
        if self.temp is not None:
            try:
                self.leftovers = reap(self.temp)
            finally:
                shutil.rmtree(self.temp, ignore_errors=True)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return "\n".join(_read(os.path.join(self.temp, f"ray-start.{s}"))[-n:].decode(errors="replace")
                             for s in ("out", "err"))
        except OSError:
            return "<no log>"

    def processes(self) -> list[Proc]:
        return processes_of(self.temp)

    def monitor(self) -> list[Proc]:
        """The autoscaler's process."""
        return [p for p in self.processes() if "autoscaler/_private/monitor.py" in p.cmdline]

    def raylets(self) -> list[Proc]:
        return [p for p in self.processes() if "/raylet/raylet " in p.cmdline]

    def worker_nodes(self) -> list[NodeView]:
        return [n for n in alive_nodes(self._gcs) if not n.is_head]


# --- ray.cluster_utils.Cluster -------------------------------------------------------------

class LocalCluster:
    """``ray.cluster_utils.Cluster``: a head of ``head_cpus`` CPUs and ``workers`` worker nodes of
    ``worker_cpus`` each, on its own temp dir (``RAY_TMPDIR`` points there while it lives, so
    even the address file Ray writes for ``ray.init("auto")`` stays out of the shared
    ``/tmp/ray``). On exit: ``Cluster.shutdown()``, then whatever still uses the temp dir is
    killed."""

    def __init__(self, head_cpus: int = 0, workers: int = 2, worker_cpus: int = 1):
        self.head_cpus, self.workers, self.worker_cpus = head_cpus, workers, worker_cpus
        self.temp = self.cluster = None
        self._saved_env: dict[str, str | None] = {}
        self.leftovers: list[Proc] = []

    def __enter__(self) -> "LocalCluster":
        from ray.cluster_utils import Cluster

        self.temp = short_temp_dir("rfc")
        for k, v in {"RAY_TMPDIR": self.temp, "RAY_ADDRESS": None}.items():
            self._saved_env[k] = os.environ.get(k)
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        try:
            common = {"object_store_memory": OBJECT_STORE_BYTES}
            self.cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": self.head_cpus, "temp_dir": os.path.join(self.temp, "ray"), "include_dashboard": False,
                # free ports, not Ray's defaults: another Ray on this machine may hold those
                "dashboard_port": free_port(), "dashboard_agent_listen_port": free_port(), **common})
            for _ in range(self.workers):
                self.cluster.add_node(num_cpus=self.worker_cpus, **common)
            self.cluster.wait_for_nodes()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stop()

    def _stop(self) -> None:
        try:
            if self.cluster is not None:
                try:
                    self.cluster.shutdown()
                except Exception:
                    pass  # reap() below stops what shutdown could not
        finally:
            try:
                if self.temp is not None:
                    self.leftovers = reap(self.temp)
            finally:
                for k, v in self._saved_env.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
                if self.temp is not None:
                    shutil.rmtree(self.temp, ignore_errors=True)

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def worker_nodes(self) -> list:
        return sorted(self.cluster.worker_nodes, key=lambda n: n.unique_id)

    def raylet_pid(self, node) -> int:
        import ray._private.ray_constants as rc

        return node.all_processes[rc.PROCESS_TYPE_RAYLET][0].process.pid

    def processes(self) -> list[Proc]:
        return processes_of(self.temp)

    def running(self, name: str) -> dict:
        """Worker node -> pids of its workers running the task or actor ``name`` now (a worker
        is a child of its node's raylet, titled ``ray::<task name>`` while it runs a task,
        ``ray::<actor class>`` or ``ray::<actor class>.<method>`` when it holds an actor)."""
        procs = self.processes()
        out = {}
        for node in self.worker_nodes:
            raylet = self.raylet_pid(node)
            out[node] = [p.pid for p in procs if p.ppid == raylet and re.match(rf"ray::{name}\b", p.cmdline)]
        return out
