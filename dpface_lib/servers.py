"""Local Jupyter servers: the per-sample dashboard (Voilà) and JupyterLab, on loopback with a token.

Both listen on 127.0.0.1 only and require a token (random unless given). They run in their own process
group, so :meth:`Server.stop` ends the server and its kernels together, by process id. JupyterLab refuses to
start as root unless told otherwise; as root (a container's usual user) ``--allow-root`` is passed. Voilà has
no such check.

``dpface dashboard [RUN_DIR ...]`` serves ``assets/dashboard.ipynb`` (no code cells shown) over the runs'
per-sample tables and saved predictions (:mod:`dpface_lib.dashboard`) and prints the URL.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dpface_lib.dashboard import CONFIG_ENV, find_sources

DASHBOARD_NOTEBOOK = Path(__file__).resolve().parent / "assets" / "dashboard.ipynb"
HOST = "127.0.0.1"
#: The dashboard's and the lab's kernels talk over Unix sockets beside their connection files (a private
#: folder). Over TCP, a kernel started while another was running (a second tab, a reload) often never
#: answered its first execute request, probably a port race between kernels, and the page hung at
#: "Executing 1 of 2". Windows has no such transport in jupyter_client.
KERNEL_TRANSPORT_ARGS = ["--KernelManager.transport=ipc"] if os.name == "posix" else []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def running_as_root() -> bool:
    """True for the root user (JupyterLab then needs ``--allow-root``)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Server:
    """A server process started by :func:`start_dashboard` or :func:`start_lab`."""

    process: subprocess.Popen
    port: int
    token: str
    path: str = "/"

    @property
    def url(self) -> str:
        """The address to open, token included."""
        return f"http://{HOST}:{self.port}{self.path}?token={self.token}"

    def stop(self, timeout: float = 10.0) -> None:
        """End the server and its kernels (:func:`stop_process_group`)."""
        stop_process_group(self.process, timeout)


def stop_process_group(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """End a process started with ``start_new_session=True`` and every process of its group: SIGTERM,
    then SIGKILL after ``timeout`` s."""
    if process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def _start(argv: list[str], port: int, token: str, path: str, env: dict[str, str], log: IO | None,
           timeout: float) -> Server:
    process = subprocess.Popen(argv, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    server = Server(process, port, token, path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise OSError(f"{argv[2]} exited with status {process.returncode} before serving on "
                               f"port {port}")
        try:
            with socket.create_connection((HOST, port), timeout=2):
                return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise TimeoutError(f"{argv[2]} did not answer on {HOST}:{port} within {timeout:.0f} s")


def start_dashboard(run_dirs: list[str | os.PathLike], *, data_root: str | os.PathLike | None = None,
                    metric: str = "ai1", port: int = 0, token: str | None = None, log: IO | None = None,
                    timeout: float = 60.0) -> Server:
    """Serve the dashboard over ``run_dirs`` with Voilà; returns once it answers. ``port=0``: a free one."""
    port = port or free_port()
    token = token or secrets.token_urlsafe(24)
    config = {"runs": [str(Path(d).resolve()) for d in run_dirs], "metric": metric,
              "data_root": str(Path(data_root).resolve()) if data_root else None}
    env = {**os.environ, CONFIG_ENV: json.dumps(config)}
    argv = [sys.executable, "-m", "voila", str(DASHBOARD_NOTEBOOK), "--no-browser", f"--port={port}",
            "--Voila.port_retries=0", f"--Voila.ip={HOST}", f"--token={token}", "--strip_sources=True",
            *KERNEL_TRANSPORT_ARGS]
    return _start(argv, port, token, "/", env, log, timeout)


def start_lab(root_dir: str | os.PathLike, *, port: int = 0, token: str | None = None, log: IO | None = None,
              timeout: float = 90.0, env: dict[str, str] | None = None) -> Server:
    """Serve JupyterLab over ``root_dir``; returns once it answers. Quiet: no news or update checks.
    ``env``: extra environment (e.g. ``JUPYTERLAB_SETTINGS_DIR`` for a test's own settings)."""
    port = port or free_port()
    token = token or secrets.token_urlsafe(24)
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.ip={HOST}",
            f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={Path(root_dir).resolve()}", "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            *KERNEL_TRANSPORT_ARGS]
    if running_as_root():
        argv.append("--allow-root")
    return _start(argv, port, token, "/lab", {**os.environ, **(env or {})}, log, timeout)


def cli(argv: list[str]) -> int:
    """``dpface dashboard [RUN_DIR ...] [--data-root DIR] [--metric ai1] [--port N] [--token T]``."""
    parser = argparse.ArgumentParser(prog="dpface dashboard",
                                     description="Serve the per-sample error dashboard over pipeline runs.")
    parser.add_argument("runs", nargs="*", type=Path, metavar="RUN_DIR",
                        help="pipeline run folders (default: each folder under runs/ with a leaderboard.csv)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="dataset of runs that do not record one (default: data_samples/)")
    parser.add_argument("--metric", default="ai1", help="metric to sort by at the start (default ai1)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--token", default=None, help="access token (default: a random one)")
    args = parser.parse_args(argv)
    runs = args.runs
    if not runs:
        from dpface_lib import RUNS_DIR

        runs = sorted(p.parent for p in RUNS_DIR.glob("*/leaderboard.csv"))
        if not runs:
            raise FileNotFoundError(f"{RUNS_DIR}: no pipeline run with a leaderboard.csv; run "
                                    "`make pipeline` or name a RUN_DIR")
    sources = find_sources(runs, args.data_root)  # bad folders fail here, in one line, before any server
    without = [s.label for s in sources if s.predictions is None]
    print(f"dashboard over {len(sources)} model run(s) in {', '.join(map(str, runs))}", file=sys.stderr)
    if without:
        print(f"no saved predictions (tables only): {', '.join(without)}", file=sys.stderr)
    server = start_dashboard(runs, data_root=args.data_root, metric=args.metric, port=args.port,
                             token=args.token, log=sys.stderr)  # Voila's own messages, on stderr
    print(f"dashboard: {server.url}\n(Ctrl-C stops it)", flush=True)
    # Voila runs in its own session, so a SIGTERM sent to this command (or its group) does not reach it:
    # turn SIGTERM into SystemExit so that the `finally` below stops the server instead of orphaning it.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        server.process.wait()
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
    return 0
