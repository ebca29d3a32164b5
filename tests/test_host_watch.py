"""HostWatch (tune_jobs.host_watch) without Ray: how its probes of the cluster's hosts are timed.
The lines it prints on a real cluster are tested in tests/test_hosts.py."""

import threading
import time

from processes import wait_until
from tune_jobs.host_watch import HostWatch


def test_hosts_cut_off_do_not_make_a_host_that_answers_look_silent(monkeypatch):
    """A probe of a cut-off host waits for its timeout; with six of them, probes one after another
    took 6 s a round, and the host that answered looked silent (a false 'not answering' line).
    Here the six cut-off probes wait for each other: they end only if all six run at once."""
    cut = {f"cut{i}" for i in range(6)}
    all_cut_probing = threading.Barrier(len(cut))
    one_at_a_time = threading.Event()
    ok_rounds = []

    def answers(target):
        if target[0] in cut:
            try:
                all_cut_probing.wait(timeout=30)  # a connect that times out once all six are waiting
            except threading.BrokenBarrierError:
                one_at_a_time.set()
            return False
        ok_rounds.append(time.monotonic())
        return True

    monkeypatch.setattr(HostWatch, "_answers", staticmethod(answers))
    watch = HostWatch(probe_every_s=0.05, silent_after_s=2.0)
    started = time.monotonic()
    for node_id in [*sorted(cut), "ok"]:
        watch._nodes[node_id] = {"name": node_id, "ip": "192.0.2.1", "port": 1, "gpus": 1.0, "cpus": 1.0,
                                 "alive": True, "answered_at": started, "told": False}
    thread = threading.Thread(target=watch._probe_forever, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(ok_rounds) >= 3 or one_at_a_time.is_set(), 120, "three rounds of probes",
                   interval_s=0.05)
    finally:
        watch.stop()  # what launch.fit does however fit() ends
    thread.join(timeout=60)
    assert not one_at_a_time.is_set(), "the cut-off hosts were probed one after another"
    assert not thread.is_alive()
    assert watch._nodes["ok"]["answered_at"] >= ok_rounds[-1]  # each answer recorded, for its own host
    assert all(watch._nodes[n]["answered_at"] == started for n in cut)
