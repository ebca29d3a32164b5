"""HostWatch (tune_jobs.host_watch) without Ray: how its probes of the cluster's hosts are timed.
The lines it prints on a real cluster are tested in tests/test_hosts.py."""

import threading
import time

from tune_jobs.host_watch import HostWatch


def test_hosts_cut_off_do_not_make_a_host_that_answers_look_silent(monkeypatch):
    """A probe of a cut-off host waits for its timeout; with six of them, probes one after another
    took 6 s a round, and the host that answered looked silent (a false 'not answering' line)."""
    cut = {f"cut{i}" for i in range(6)}

    def answers(target):
        if target[0] in cut:
            time.sleep(1.0)  # a connect that times out
            return False
        return True

    monkeypatch.setattr(HostWatch, "_answers", staticmethod(answers))
    watch = HostWatch(probe_every_s=0.05, silent_after_s=2.0)
    for node_id in [*sorted(cut), "ok"]:
        watch._nodes[node_id] = {"name": node_id, "ip": "192.0.2.1", "port": 1, "gpus": 1.0, "cpus": 1.0,
                                 "alive": True, "answered_at": time.monotonic(), "told": False}
    thread = threading.Thread(target=watch._probe_forever, daemon=True)
    thread.start()
    time.sleep(3.5)
    assert time.monotonic() - watch._nodes["ok"]["answered_at"] < watch.silent_after_s
    assert all(time.monotonic() - watch._nodes[n]["answered_at"] >= 3 for n in cut)
    watch.stop()  # what launch.fit does however fit() ends
    thread.join(timeout=3)
    assert not thread.is_alive()
