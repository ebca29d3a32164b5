"""The test run itself: ended with SIGTERM (a CI timeout, `kill`), it tears down as on Ctrl-C."""

import signal
import subprocess
import sys
import time
from pathlib import Path

TEST = '''
import subprocess, sys, time
from pathlib import Path

def test_holds_a_process():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    Path({pid!r}).write_text(str(child.pid))
    try:
        time.sleep(600)
    finally:  # what a test that starts a Ray node or a daemon does
        child.kill()
        child.wait()
'''


def test_a_run_ended_with_sigterm_runs_each_tests_teardown(tmp_path):
    pid_file = tmp_path / "child.pid"
    (tmp_path / "test_held.py").write_text(TEST.format(pid=str(pid_file)))
    conftest = Path(__file__).with_name("conftest.py")
    (tmp_path / "conftest.py").write_text(conftest.read_text())  # this suite's conftest, as the run uses it
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() or not pid_file.read_text():
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        child = int(pid_file.read_text())
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=120)
    finally:
        run.kill()
    assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text(), out
