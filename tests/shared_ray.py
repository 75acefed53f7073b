"""One Ray session with Serve for a whole test run, shared by its xdist workers.

An idle Ray session with Serve takes about an eighth of a core (its GCS, raylet, metrics agent,
log monitor, Serve controller and proxy; measured beside one idle kdcanary app), for as long as
it lives: with one per worker, a run paid that twice over its whole length. The first worker to
need Ray starts it and writes where it listens into a file in the run's shared folder; the other
connects to it. A Ray session ends with the driver that started it, so that worker, at the end
of its own tests, waits until no other worker uses the session before it shuts it down; a
worker that comes later finds no file and starts a session of its own.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock
from pydantic import BaseModel

LAST_USER_WAIT_S = 1800.0  # a worker that died without letting go must not hold the run forever


class Session(BaseModel):
    """Where the shared session listens, and how many workers use it now."""

    address: str  # the GCS, for ray.init(address=...)
    http_port: int
    metrics_port: int
    users: int = 1


@contextlib.contextmanager
def shared_session(folder: Path, start: Callable[[], Session]) -> Iterator[Session]:
    """The run's session: started here with `start()` (which calls ray.init and serve.start) when
    no worker runs one, else connected to (with the run's one Ray token: tests/conftest.py)."""
    import ray

    state, lock = folder / "ray-session.json", FileLock(folder / "ray-session.lock")
    with lock:
        owner = not state.is_file()
        if owner:
            session = start()
        else:
            session = Session.model_validate_json(state.read_text())
            ray.init(address=session.address, log_to_driver=False)
            session.users += 1
        state.write_text(session.model_dump_json())
    try:
        yield session
    finally:
        with lock:
            session = Session.model_validate_json(state.read_text())
            state.write_text(session.model_copy(update={"users": session.users - 1}).model_dump_json())
        if owner:
            _wait_for_last_user(state, lock)
            from ray import serve

            serve.shutdown()
        ray.shutdown()


def _wait_for_last_user(state: Path, lock: FileLock) -> None:
    """Until no worker uses the session; the file goes with the lock held, so none joins after."""
    deadline = time.monotonic() + LAST_USER_WAIT_S
    while True:
        with lock:
            if Session.model_validate_json(state.read_text()).users <= 0 or time.monotonic() > deadline:
                state.unlink()
                return
        time.sleep(1.0)
