"""Say on the console when a host of the cluster stops answering, is lost, or joins.

    tune.RunConfig(callbacks=[HostWatch(), ...])   # launch.py adds it where the sweep joined a cluster

    host   w2 (10.89.0.13) not answering for 10 s: #3 (epoch 14) waits; Ray retries them on other hosts ...
    host   w2 (10.89.0.13) answers again after 25 s
    host   w2 (10.89.0.13) lost (Ray marked it dead, 62 s after it stopped answering): #3 continues from
           its last checkpoint on another host; capacity now 1 GPUs, 1 CPUs on 2 node(s) (was 2 GPUs,
           2 CPUs on 3 node(s)); restart Ray on it (`ray start --address=...`) to bring it back: ...
    host   w2 (10.89.0.13) joined: capacity now 2 GPUs, 2 CPUs on 3 node(s)

Every few seconds the driver reads Ray's node table (`ray.nodes()`) and, in threads of its own,
opens a TCP connection to every live node's raylet at once: a host that is cut off or gone
answers no more within seconds, while Ray declares it dead only after its health checks have
failed for a while (about a minute; sooner where the host's Ray processes are gone). A node Ray
declared dead never rejoins, even when its link comes back (its raylet exits); Ray restarted on
that host joins as a new node, and the running sweep uses it at once.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ray import tune

PROBE_EVERY_S = 2.0  # how often each live node's raylet is probed
PROBE_TIMEOUT_S = 2.0
PROBE_THREADS = 32  # nodes probed at once
SILENT_AFTER_S = 8.0  # a node that has not answered for this long is reported
NODES_EVERY_S = 2.0  # how often Ray's node table is read


def fmt_capacity(nodes: dict[str, dict]) -> str:
    alive = [n for n in nodes.values() if n["alive"]]
    gpus = sum(n["gpus"] for n in alive)
    cpus = sum(n["cpus"] for n in alive)
    return f"{gpus:g} GPUs, {cpus:g} CPUs on {len(alive)} node(s)"


class HostWatch(tune.Callback):
    """Prints a line when a node stops answering, answers again, is declared dead, or joins."""

    def __init__(self, probe_every_s: float = PROBE_EVERY_S, silent_after_s: float = SILENT_AFTER_S) -> None:
        self.probe_every_s, self.silent_after_s = probe_every_s, silent_after_s
        self._nodes: dict[str, dict] = {}  # node id -> name, ip, port, gpus, cpus, alive, answered_at, told
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read_at = 0.0

    # -- Tune's hooks (the driver's main thread)
    def on_step_end(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if now - self._read_at >= NODES_EVERY_S:
            self._read_at = now
            self._read_nodes(trials)
        if self._thread is None:
            self._thread = threading.Thread(target=self._probe_forever, name="host-watch", daemon=True)
            self._thread.start()
        self._report_silent(trials)

    def on_experiment_end(self, trials, **info) -> None:
        self.stop()

    def stop(self) -> None:
        """End the probing thread (also where `fit()` raised or was interrupted: Tune then calls no hook)."""
        self._stop.set()

    # -- what Ray's node table says
    def _read_nodes(self, trials) -> None:
        import ray

        try:
            table = ray.nodes()
        except Exception:  # noqa: BLE001 - the GCS itself unreachable: nothing to compare now
            return
        first = not self._nodes
        before = fmt_capacity(self._nodes) if self._nodes else ""
        for row in table:
            node_id, alive = row.get("NodeID", ""), bool(row.get("Alive"))
            with self._lock:
                known = self._nodes.get(node_id)
                if known is None:
                    if not alive:
                        continue  # dead before we looked: not this sweep's news
                    resources = row.get("Resources", {})
                    self._nodes[node_id] = {
                        "name": row.get("NodeManagerHostname") or row.get("NodeManagerAddress", "?"),
                        "ip": row.get("NodeManagerAddress", ""), "port": int(row.get("NodeManagerPort") or 0),
                        "gpus": float(resources.get("GPU", 0)), "cpus": float(resources.get("CPU", 0)),
                        "alive": True, "answered_at": time.monotonic(), "told": False}
                    if not first:
                        self._say(f"{self._label(node_id)} joined: capacity now {fmt_capacity(self._nodes)}")
                    continue
                if known["alive"] and not alive:
                    known["alive"] = False
                    silent = time.monotonic() - known.get("silent_since", known["answered_at"])
                    waiting = self._trials_on(node_id, trials)
                    retried = (f"{waiting} {'continues' if ',' not in waiting else 'continue'} from its last "
                               "checkpoint on another host" if waiting else "it ran no trial")
                    restart = f"`ray start --address={ray.get_runtime_context().gcs_address}`"
                    self._say(f"{self._label(node_id)} lost (Ray marked it dead, {silent:.0f} s after it stopped "
                              f"answering): {retried}; capacity now {fmt_capacity(self._nodes)} (was {before}); "
                              f"restart Ray on it ({restart}) to bring it back: the sweep uses it as soon as it joins")

    # -- whether each live node answers (threads: a cut-off host makes its probe wait PROBE_TIMEOUT_S,
    # and the nodes are probed at once, so a round takes at most that however many are cut off)
    def _probe_forever(self) -> None:
        with ThreadPoolExecutor(max_workers=PROBE_THREADS, thread_name_prefix="host-probe") as pool:
            while not self._stop.wait(self.probe_every_s):
                with self._lock:
                    targets = [(node_id, n["ip"], n["port"]) for node_id, n in self._nodes.items()
                               if n["alive"] and n["port"]]
                for (node_id, *_), answered in zip(targets, pool.map(self._answers, targets)):
                    if answered:
                        with self._lock:
                            self._nodes[node_id]["answered_at"] = time.monotonic()

    @staticmethod
    def _answers(target: tuple[str, str, int]) -> bool:
        try:
            with socket.create_connection(target[1:], timeout=PROBE_TIMEOUT_S):
                return True
        except OSError:
            return False

    def _report_silent(self, trials) -> None:
        now = time.monotonic()
        with self._lock:
            for node_id, node in self._nodes.items():
                silent = now - node["answered_at"]
                if node["alive"] and not node["told"] and silent >= self.silent_after_s:
                    node["told"] = True
                    node["silent_since"] = node["answered_at"]  # kept: Ray may give the node up even after it is back
                    waiting = self._trials_on(node_id, trials)
                    waits = f"{waiting} {'waits' if ',' not in waiting else 'wait'}" if waiting else "it runs no trial"
                    self._say(f"{self._label(node_id)} not answering for {silent:.0f} s: {waits}; Ray retries them "
                              "on other hosts once it gives the host up (after about a minute without answer; "
                              "sooner where its processes are gone)")
                elif node["alive"] and node["told"] and silent < self.silent_after_s:
                    node["told"] = False
                    back_after_s = node["answered_at"] - node["silent_since"]
                    self._say(f"{self._label(node_id)} answers again after {back_after_s:.0f} s")

    # -- helpers
    def _label(self, node_id: str) -> str:
        node = self._nodes[node_id]
        return f"host   {node['name']} ({node['ip']})" if node["name"] != node["ip"] else f"host   {node['ip']}"

    @staticmethod
    def _trials_on(node_id: str, trials) -> str:
        """'#3 (epoch 14), #5 (epoch 2)': the unfinished trials whose last report came from `node_id`."""
        found = []
        for trial in trials:
            result = trial.last_result or {}
            if trial.status in ("RUNNING", "PENDING") and result.get("node_id") == node_id:
                number = trial.config.get("trial", {}).get("number", "?")
                found.append(f"#{number} (epoch {result.get('epoch', '?')})")
        return ", ".join(found)

    @staticmethod
    def _say(line: str) -> None:
        print(line, flush=True, file=sys.stdout)

    def __getstate__(self) -> dict:
        return {"probe_every_s": self.probe_every_s, "silent_after_s": self.silent_after_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)
