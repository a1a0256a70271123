"""scripts/launch_workers.py: TF_CONFIG per worker, and no worker left hanging when another fails."""

import json
import subprocess
import sys

from conftest import REPO

LAUNCHER = [sys.executable, str(REPO / "scripts" / "launch_workers.py")]
PRINT_TASK = "import os, json; c = json.loads(os.environ['TF_CONFIG']); print(json.dumps(c))"


def launch(*args, timeout=60):
    return subprocess.run([*LAUNCHER, *args], capture_output=True, text=True, timeout=timeout)


def test_several_machines_mode_sets_this_machines_tf_config():
    done = launch("--hosts", "10.0.0.1:2222,10.0.0.2:2222", "--index", "1", "--", sys.executable, "-c", PRINT_TASK)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
        "task": {"type": "worker", "index": 1},
    }


def test_local_workers_get_distinct_free_ports_and_indexes():
    done = launch("--workers", "3", "--", sys.executable, "-c", PRINT_TASK)
    assert done.returncode == 0, done.stdout
    configs = [json.loads(line.split("] ", 1)[1]) for line in done.stdout.splitlines() if line.startswith("[worker")]
    assert sorted(c["task"]["index"] for c in configs) == [0, 1, 2]
    hosts = configs[0]["cluster"]["worker"]
    assert len(set(hosts)) == 3 and all(h.startswith("127.0.0.1:") for h in hosts)
    assert all(c["cluster"]["worker"] == hosts for c in configs)


def test_a_failing_worker_stops_the_others():
    fail_one = (
        "import os, json, sys, time; i = json.loads(os.environ['TF_CONFIG'])['task']['index']; "
        "sys.exit(3) if i == 1 else time.sleep(120)"
    )
    done = launch("--workers", "2", "--", sys.executable, "-c", fail_one, timeout=60)
    assert done.returncode == 3
    assert "[launcher] worker 1 exited with 3; stopping the others" in done.stdout


def test_usage_errors():
    assert "--index: received 5; allowed: 0 to 1" in launch("--hosts", "a:1,b:2", "--index", "5", "--", "x").stderr
    assert launch("--workers", "0", "--", "x").returncode == 2
    assert "no training command given" in launch("--workers", "2").stderr
