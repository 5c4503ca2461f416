"""What a flow's command line does around the flow itself, to start and end in seconds.

Run without a Prefect server (no PREFECT_API_URL), a flow talks to Prefect's temporary server, a process that takes
about five seconds to come up; `start_temporary_server`, called at the top of a flow module before its imports,
starts it on a thread so that it comes up while the flow's libraries load (torch, transformers, lm-eval, MLflow:
seconds as well) instead of after them. `server_ready` waits for it before the flow runs. `end_quickly` lets the
process's exit skip the garbage collector's last walk over every object those libraries made (1.5-3 s on two cores).
"""

import contextlib
import gc
import threading

_starting: threading.Thread | None = None


def start_temporary_server(module: str) -> None:
    """When module (the caller's __name__) is the program being run and no Prefect API is configured, start Prefect's
    temporary server on a thread; Prefect's first call for a client then finds it running. Inside tests, deployments
    and other importers nothing happens."""
    global _starting
    if module != "__main__" or _starting is not None:
        return
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    from prefect.server.api.server import SubprocessASGIServer  # imported here: threads importing at once can clash

    # Not a daemon: a process ending early (bad input) waits for the start, so the server's stop at exit finds it.
    _starting = threading.Thread(target=_start, args=(SubprocessASGIServer(),), name="prefect-server")
    _starting.start()


def _start(server) -> None:
    with contextlib.suppress(Exception):  # not running then: Prefect's own first call starts it and says what fails
        server.start()


def server_ready() -> None:
    """Wait until the server start_temporary_server began answers (or failed to start); nothing if none began."""
    if _starting is not None:
        _starting.join()


def end_quickly() -> None:
    """Call when the flow has returned and the process only exits: everything made so far is left out of the
    garbage collector's passes at exit (gc.freeze). Objects that die by reference count at exit are finalized as
    before; only cycles left over from the libraries are not collected, which the operating system reclaims."""
    gc.freeze()
