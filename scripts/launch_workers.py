"""Launch multi-worker training: writes each worker's TF_CONFIG and runs the training command.

On one machine, N local workers on free 127.0.0.1 ports (to try it, or to use N processes):

    python scripts/launch_workers.py --workers 2 -- \
        tftrain train --engine custom --strategy multi_worker

On several machines, the same --hosts list everywhere and each machine's own --index (0 is the chief, which logs
to MLflow: point MLFLOW_TRACKING_URI at a shared tracking server):

    python scripts/launch_workers.py --hosts 10.0.0.1:2222,10.0.0.2:2222 --index 0 -- tftrain train ...

Local workers' output is prefixed with [worker i]. If one worker fails, the others are stopped (they would wait
for it forever in their collective ops) and the launcher exits with the failed worker's code.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(hosts: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})


def _relay(stream, prefix: str) -> None:
    for line in iter(stream.readline, ""):
        sys.stdout.write(f"{prefix} {line}")
        sys.stdout.flush()


def run_local(n: int, command: list[str]) -> int:
    hosts = [f"127.0.0.1:{p}" for p in free_ports(n)]
    workers = []
    for i in range(n):
        env = {**os.environ, "TF_CONFIG": tf_config(hosts, i)}
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=_relay, args=(proc.stdout, f"[worker {i}]"), daemon=True).start()
        workers.append(proc)
    print(f"launched {n} workers on {', '.join(hosts)}", flush=True)
    code = 0
    pending = set(range(n))
    while pending:
        for i in list(pending):
            rc = workers[i].poll()
            if rc is None:
                continue
            pending.discard(i)
            if rc and not code:
                code = rc
                print(f"[launcher] worker {i} exited with {rc}; stopping the others", flush=True)
                for j in pending:
                    workers[j].terminate()
        time.sleep(0.2)
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--workers", type=int, help="run this many local workers on 127.0.0.1")
    where.add_argument("--hosts", help="comma-separated host:port of every worker, chief first")
    parser.add_argument("--index", type=int, help="with --hosts: this machine's position in the list")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the training command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no training command given after --")
    if args.workers is not None:
        if args.workers < 1:
            parser.error(f"--workers: received {args.workers}; allowed: an integer >= 1")
        sys.exit(run_local(args.workers, command))
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    if args.index is None or not 0 <= args.index < len(hosts):
        parser.error(f"--index: received {args.index}; allowed: 0 to {len(hosts) - 1} with these --hosts")
    os.environ["TF_CONFIG"] = tf_config(hosts, args.index)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
