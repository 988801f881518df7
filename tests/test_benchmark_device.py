"""A benchmark entry never starts on a device an earlier entry's processes still hold."""

import os
import sys
import time

import pytest

from harness.errors import UserError
from harness.launch.benchmark import check_device_free, run_forwarding_stops
from harness.memory_plan import Part


def test_what_an_entry_leaves_behind_ends_with_it(tmp_path):
    """A run whose engine core outlives it (here: a grandchild that sleeps on) is ended with its process group."""
    pid_file = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid))")
    rc, stopped = run_forwarding_stops([sys.executable, "-c", script])
    assert (rc, stopped) == (0, None)
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        if open(f"/proc/{grandchild}/stat").read().split()[2] == "Z":  # ended, not yet reaped by init
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"pid {grandchild} of the finished entry is still running")


def test_a_device_still_held_is_refused_with_the_pids():
    held = [Part(name="pid 4242 (python -m vllm ...)", gib=24.0, measured=True)]
    t = time.monotonic()
    with pytest.raises(UserError, match=r"still held by: pid 4242 \(python -m vllm \.\.\.\) 24\.0 GiB"):
        check_device_free(set(), wait_s=0.5, holders=lambda: held)
    assert time.monotonic() - t < 5
    calls = iter([held, held, []])  # memory released a moment after the process ended: no refusal
    check_device_free(set(), wait_s=10, holders=lambda: next(calls))
