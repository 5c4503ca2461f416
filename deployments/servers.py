"""Start and stop the two servers people use: Prefect (trigger and watch studies) and MLflow (compare runs).

    make servers [SERVERS_DIR=runs/servers]        # python -m deployments.servers start --dir DIR
    make servers-stop                              # python -m deployments.servers stop --dir DIR

Both bind to 127.0.0.1 and keep their data under DIR: Prefect's SQLite database in DIR/prefect, MLflow's in
DIR/mlflow.db with artifacts in DIR/mlartifacts. Logs go to DIR/*.log and process ids to DIR/*.pid; stop
ends exactly those processes. Ports: Prefect 4200 (UI and API at http://127.0.0.1:4200), MLflow 5000.
Point flows at them with the variables `start` prints.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PREFECT_PORT, MLFLOW_PORT = 4200, 5000


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def commands(folder: Path, prefect_port: int, mlflow_port: int) -> dict[str, tuple[list[str], dict, str]]:
    """name -> (command, extra environment, health URL)."""
    prefect_env = {
        "PREFECT_HOME": str(folder / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{prefect_port}/api",
    }
    mlflow_env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return {
        "prefect": (
            [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            prefect_env,
            f"http://127.0.0.1:{prefect_port}/api/health",
        ),
        "mlflow": (
            [
                _bin("mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{folder / 'mlflow.db'}",
                "--artifacts-destination",
                str(folder / "mlartifacts"),
            ],  # fmt: skip
            mlflow_env,
            f"http://127.0.0.1:{mlflow_port}/health",
        ),
    }


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def running(pid_file: Path) -> int | None:
    """The pid recorded in pid_file if that process still exists."""
    if not pid_file.is_file():
        return None
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def start(folder: Path, prefect_port: int = PREFECT_PORT, mlflow_port: int = MLFLOW_PORT, wait: float = 180) -> None:
    folder = folder.expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    specs = commands(folder, prefect_port, mlflow_port)
    for name, (command, env, url) in specs.items():
        pid_file = folder / f"{name}.pid"
        if running(pid_file):
            print(f"{name}: already running (pid {pid_file.read_text()})")
            continue
        if healthy(url):
            raise SystemExit(f"error: something else already answers at {url}; stop it or choose another port")
        log = open(folder / f"{name}.log", "ab")  # noqa: SIM115 - the server keeps writing to it
        process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        pid_file.write_text(str(process.pid))
    deadline = time.monotonic() + wait
    for name, (_, _, url) in specs.items():
        while not healthy(url):
            if time.monotonic() > deadline or not running(folder / f"{name}.pid"):
                stop(folder)
                raise SystemExit(f"error: the {name} server did not come up; see {folder / (name + '.log')}")
            time.sleep(1)
        print(f"{name}: up at {url.rsplit('/', 2)[0] if name == 'prefect' else url.rsplit('/', 1)[0]}")
    print(
        "\nUse them from this shell:\n"
        f"  export PREFECT_API_URL=http://127.0.0.1:{prefect_port}/api\n"
        f"  export MLFLOW_TRACKING_URI=http://127.0.0.1:{mlflow_port}\n"
        f"Prefect UI http://127.0.0.1:{prefect_port}   MLflow UI http://127.0.0.1:{mlflow_port}"
    )


def stop(folder: Path, grace: float = 20) -> None:
    """End the servers started from folder (their whole process groups), by the recorded pids."""
    folder = folder.expanduser().resolve()
    for name in ("prefect", "mlflow"):
        pid_file = folder / f"{name}.pid"
        pid = running(pid_file)
        if pid is None:
            pid_file.unlink(missing_ok=True)
            continue
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while running(pid_file) and time.monotonic() < deadline:
            time.sleep(0.2)
        if running(pid_file):
            os.killpg(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        print(f"{name}: stopped (pid {pid})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument(
        "--dir", default="runs/servers", help="where the servers keep their data (default runs/servers)"
    )
    parser.add_argument("--prefect-port", type=int, default=PREFECT_PORT)
    parser.add_argument("--mlflow-port", type=int, default=MLFLOW_PORT)
    args = parser.parse_args(argv)
    if args.action == "start":
        start(Path(args.dir), args.prefect_port, args.mlflow_port)
    else:
        stop(Path(args.dir))


if __name__ == "__main__":
    main()
