"""What the benchmarks share: a scratch database, timing with the CPU of
this process and of the server process, peak memory, COPY helpers."""

from __future__ import annotations

import io
import os
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def server_cpu() -> float | None:
    """CPU seconds used so far by our connection's server process, when the
    server runs on this machine (it does for the embedded one and in CI)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime, fields 14 and 15 of proc(5), in clock ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    seconds: float = 0.0
    client_cpu: float = 0.0
    server_cpu: float | None = None


@contextmanager
def timed(label: str, out: dict[str, Phase]) -> Iterator[None]:
    """Wall time, and the CPU time of this process and of the server
    process, which stay meaningful when the machine is busy with other
    work."""
    server_start = server_cpu()
    cpu_start = time.process_time()
    start = time.perf_counter()
    yield
    phase = Phase(time.perf_counter() - start, time.process_time() - cpu_start)
    server_end = server_cpu()
    if server_start is not None and server_end is not None:
        phase.server_cpu = server_end - server_start
    out[label] = phase


def recreate_database(name: str) -> str:
    """Drop and create the scratch database, then point Django at it;
    return the name of the database the settings named."""
    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        cursor.execute(f"CREATE DATABASE {name}")
    connection.close()
    original: str = settings.DATABASES["default"]["NAME"]
    settings.DATABASES["default"]["NAME"] = name
    connection.settings_dict["NAME"] = name
    return original


def drop_database(name: str, original: str) -> None:
    """Leave no gigabyte of scratch data in the development server."""
    from django.conf import settings
    from django.db import connection

    connection.close()
    settings.DATABASES["default"]["NAME"] = original
    connection.settings_dict["NAME"] = original
    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")


def checkpoint() -> None:
    """Start each timed phase with no dirty buffers left by the last one."""
    execute("CHECKPOINT")


def execute(sql: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql)


def copy_out(table: str, target: IO[bytes] | None = None) -> bytes:
    """COPY a table out, into `target` (a file) or into memory."""
    from django.db import connection

    buffer = target if target is not None else io.BytesIO()
    with connection.cursor() as cursor:
        cursor.copy_expert(f"COPY {table} TO STDOUT", buffer)
    return b"" if target is not None else buffer.getvalue()  # type: ignore[union-attr]


def copy_in(table: str, data: bytes | IO[bytes]) -> None:
    from django.db import connection

    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with connection.cursor() as cursor:
        cursor.copy_expert(f"COPY {table} FROM STDIN", source, 1 << 20)


def server_version() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        return str(cursor.fetchone()[0]).split(" on ")[0]
