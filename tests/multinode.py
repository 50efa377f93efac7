"""A Ray cluster of several nodes on this one machine, for tests.

Every node is its own `ray start --block` with token authentication on, its own
ports and temp dir, a custom resource `node_<name>` that tells the nodes apart,
and every listening socket on 127.0.0.1. Each `ray start` leads a session of its
own (start_new_session), and Ray's processes of that node (raylet, agents,
workers) stay in it, even once reparented: so a test can find which node a
process belongs to, kill exactly one node (SIGKILL of its raylet), and stop
every process a node started, by that session's id.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
# Small object stores, so that a few nodes fit in RAM beside other work on a CI machine.
OBJECT_STORE_BYTES = 128 << 20


@dataclass(frozen=True)
class NodeSpec:
    """One node: its name (custom resource `node_<name>`), CPUs and logical GPUs."""

    name: str
    num_cpus: int = 1
    num_gpus: int = 0


@dataclass
class _Node:
    spec: NodeSpec
    proc: subprocess.Popen
    """`ray start --block`: the parent of the node's raylet, and its session's leader."""
    temp_dir: Path
    node_id: str | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalCluster:
    """A head and worker nodes, each its own `ray start --block`, on 127.0.0.1 with token auth.

    `env` is what a client needs: HOME with ~/.ray/auth_token, RAY_AUTH_MODE=token
    and this virtualenv first on PATH. Use it as a context manager: on exit every
    process of every node is stopped, after a failure or a killed node too.
    """

    def __init__(self, head: NodeSpec, workers: list[NodeSpec],
                 object_store_bytes: int = OBJECT_STORE_BYTES) -> None:
        names = [head.name, *(w.name for w in workers)]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must differ: {names}")
        self.head, self.workers = head, list(workers)
        self.object_store_bytes = object_store_bytes
        # A short root: Ray's Unix sockets live under it and their paths must fit in 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="srmn-"))
        home = self.root / "home"
        (home / ".ray").mkdir(parents=True)
        (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("RAY_") or k == "RAY_DISABLE_IMPORT_WARNING"}
        path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
        # Clients in Ray's single-node mode look for their node on 127.0.0.1, where the
        # nodes are (outside it, on the machine's address, where none is).
        self.env = {**base, "HOME": str(home), "RAY_AUTH_MODE": "token",
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PATH": path}
        self.port = free_port()
        self.dashboard_port = free_port()
        self.nodes: dict[str, _Node] = {}

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    # --- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout_s: float = 180.0) -> None:
        """Start the head, then every worker at once; return when the GCS holds all alive."""
        self._start_node(self.head, head=True)
        self.wait_for_nodes([self.head.name], timeout_s)
        for spec in self.workers:
            self._start_node(spec, head=False)
        self.wait_for_nodes(list(self.nodes), timeout_s)

    def _start_node(self, spec: NodeSpec, head: bool) -> None:
        temp_dir = self.root / spec.name
        temp_dir.mkdir()
        # Every listening socket is on 127.0.0.1, which takes two routes: Ray rewrites
        # --node-ip-address=127.0.0.1 (and --address=127.0.0.1:P) to the machine's address
        # unless in its single-node mode, and that mode refuses to start a worker node. So
        # the head runs in single-node mode; a worker, outside it, joins through
        # `LOCALHOST` (which resolves to 127.0.0.1 but is not a spelling Ray rewrites) and
        # takes for its own address the one it reaches the head from: 127.0.0.1.
        if head:
            single_node = "0"
            role = ["--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={self.dashboard_port}",
                    f"--ray-client-server-port={free_port()}"]
        else:
            single_node = "1"
            role = [f"--address=LOCALHOST:{self.port}"]
        options = [
            "--block", f"--num-cpus={spec.num_cpus}", f"--num-gpus={spec.num_gpus}",
            f"--resources={json.dumps({f'node_{spec.name}': 1})}",
            f"--object-store-memory={self.object_store_bytes}", f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            # Nodes share this machine: no fixed default port (0: the OS picks one).
            "--node-manager-port=0", f"--object-manager-port={free_port()}",
            "--min-worker-port=0", "--max-worker-port=0",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
        ]
        ray = os.path.join(os.path.dirname(sys.executable), "ray")
        with (temp_dir / "ray-start.log").open("wb") as log:
            proc = subprocess.Popen(
                [ray, "start", *role, *options],
                env={**self.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": single_node},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes[spec.name] = _Node(spec, proc, temp_dir)

    def stop(self) -> None:
        """Stop every node, then SIGKILL whatever is left in its session; raise if any remains.

        SIGINT, not SIGTERM: `ray start --block` then stops its children at once,
        where on SIGTERM a head that had run a job took 30 s.
        """
        nodes = list(self.nodes.values())
        for node in reversed(nodes):
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        for node in reversed(nodes):
            try:
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for node in nodes:
            _kill_session(node.proc.pid)
        for node in nodes:
            node.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        left = [p.pid for node in nodes for p in _session_processes(node.proc.pid)]
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = [p.pid for node in nodes for p in _session_processes(node.proc.pid)]
        shutil.rmtree(self.root, ignore_errors=True)
        if left:
            raise RuntimeError(f"Ray processes left after stopping the cluster: {left}")

    def wait_for_nodes(self, names: list[str], timeout_s: float) -> None:
        """Return once the GCS holds every named node alive; raise if one exits or time is up."""
        deadline = time.monotonic() + timeout_s
        while True:
            for name in names:
                proc = self.nodes[name].proc
                if proc.poll() is not None:
                    raise RuntimeError(f"node {name} exited ({proc.returncode}): "
                                       f"{self.start_log(name)[-2000:]}")
            try:
                alive = self.alive_nodes()
            except (RuntimeError, subprocess.TimeoutExpired):
                alive = {}
            if all(name in alive for name in names):
                for name in names:
                    self.nodes[name].node_id = alive[name]
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"nodes {names} not all alive after {timeout_s:.0f} s: {alive}")
            time.sleep(1)

    def wait_for_death(self, name: str, timeout_s: float = 120.0) -> None:
        """Return once the GCS no longer holds the node alive; raise if time is up."""
        deadline = time.monotonic() + timeout_s
        while name in self.alive_nodes():
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {name} still alive after {timeout_s:.0f} s")
            time.sleep(1)

    def start_log(self, name: str) -> str:
        """What the node's `ray start` printed."""
        return (self.nodes[name].temp_dir / "ray-start.log").read_text(errors="replace")

    # --- state -----------------------------------------------------------------------------

    def query(self, code: str, timeout_s: float = 60.0):
        """Run `code` in a Python connected to the cluster; it prints one JSON value, returned."""
        script = ("import json, ray\n"
                  f"ray.init(address={self.gcs_address!r}, logging_level='ERROR',"
                  " log_to_driver=False)\n" + code)
        proc = subprocess.run([sys.executable, "-c", script], env=self.env, capture_output=True,
                              text=True, timeout=timeout_s, cwd=ROOT, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"cluster query failed: {proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def alive_nodes(self) -> dict[str, str]:
        """{node name: node id} of the nodes the GCS holds alive."""
        found = self.query("print(json.dumps([[n['NodeID'], sorted(n['Resources'])]"
                           " for n in ray.nodes() if n['Alive']]))")
        names = {}
        for node_id, resources in found:
            for resource in resources:
                if resource.startswith("node_") and resource[5:] in self.nodes:
                    names[resource[5:]] = node_id
        return names

    def worker_nodes(self) -> dict[int, str]:
        """{pid: node name} of every worker process the cluster started, alive or dead.

        From the state API's worker table, which keeps the dead (an actor's own
        entry names only its latest process once Ray has restarted it).
        """
        found = self.query(
            "from ray.util.state import list_workers\n"
            f"workers = list_workers(address={self.dashboard_url!r}, detail=True, limit=10000,"
            " raise_on_missing_output=False)\n"
            "print(json.dumps([[w.pid, w.node_id] for w in workers if w.pid]))")
        names = {node.node_id: name for name, node in self.nodes.items()}
        return {pid: names[node_id] for pid, node_id in found if node_id in names}

    def actors(self) -> list[dict]:
        """Every actor of the cluster, alive or dead: class, state, node, restarts (state API)."""
        found = self.query(
            "from ray.util.state import list_actors\n"
            f"actors = list_actors(address={self.dashboard_url!r}, detail=True, limit=10000,"
            " raise_on_missing_output=False)\n"
            "print(json.dumps([[a.class_name, a.state, a.node_id, a.pid, a.num_restarts]"
            " for a in actors]))")
        names = {node.node_id: name for name, node in self.nodes.items()}
        return [{"class_name": class_name, "state": state, "node": names.get(node_id),
                 "pid": pid, "num_restarts": restarts}
                for class_name, state, node_id, pid, restarts in found]

    def node_processes(self, name: str) -> list[psutil.Process]:
        """The live processes of a node: those of the session its `ray start` leads."""
        return _session_processes(self.nodes[name].proc.pid)

    def find_process(self, title_part: str) -> tuple[str, int] | None:
        """(node name, pid) of a live process whose command line holds `title_part`, if any.

        Ray titles a worker process after its actor: `ray::MapWorker(MapBatches(UpscaleActor))`.
        """
        for name in self.nodes:
            for proc in self.node_processes(name):
                try:
                    if title_part in " ".join(proc.cmdline()):
                        return name, proc.pid
                except psutil.Error:
                    continue
        return None

    def raylet_pid(self, name: str) -> int:
        """The pid of the node's raylet, a child of its `ray start --block`."""
        parent = psutil.Process(self.nodes[name].proc.pid)
        raylets = [p.pid for p in parent.children() if p.name() == "raylet"]
        if len(raylets) != 1:
            raise RuntimeError(f"node {name}: expected one raylet, found {raylets}")
        return raylets[0]

    def kill_node(self, name: str) -> None:
        """SIGKILL the node's raylet: the node dies as if its machine had gone.

        Its workers exit when they lose their raylet, its `ray start --block` stops
        what else it started, and the GCS marks the node dead once its health
        checks fail (about 15 s with Ray's defaults).
        """
        os.kill(self.raylet_pid(name), signal.SIGKILL)


def _session_processes(sid: int) -> list[psutil.Process]:
    """The live processes of a session (a zombie has already died; its reaper collects it)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return found


def _kill_session(sid: int) -> None:
    """SIGKILL every process left in a node's session."""
    for proc in _session_processes(sid):
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
