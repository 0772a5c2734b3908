"""Small process helpers every layer uses: a free TCP port, the parent-death signal, the one
line of an exception a user is shown, the check for an optional dependency (an extra), and a
process's pending stop request (a batch system's warning that the job will end soon)."""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterator


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a rendezvous or a local server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent(sig: int = 9) -> None:
    """Linux: have the kernel send `sig` to this process when its parent exits, so the workers of a
    killed launcher never run on as orphans (they would race a re-run of the same run)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, cut to `limit` (its type when it has none)."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(e).__name__


def exit_reason(returncode: int) -> str:
    """How a child process ended, in words: 'was killed by SIGKILL', 'exited with code 1'."""
    import signal

    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def describe(e: BaseException, limit: int = 300) -> str:
    """`Type: first line` — how a failure's reason reads in status.json, MLflow and the terminal."""
    first = first_line(e, limit)
    return first if first == type(e).__name__ else f"{type(e).__name__}: {first}"


def require(module: str, extra: str, what: str) -> None:
    """UserError naming the extra to install when an optional dependency is missing."""
    import importlib.util

    from pdsweep.errors import UserError

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise UserError(f"{what} needs {module}, which is pdsweep's {extra} extra: pip install 'pdsweep[{extra}]'")


_stop_reason: str | None = None
_requeue = False
_deferred = False


def request_stop(reason: str, requeue: bool = False) -> None:
    """Ask this process to stop at its next safe point — a training run writes a checkpoint after the
    step it is in and ends as interrupted. `requeue`: a batch system's warning (the job is requeued
    and resumes) rather than a request to stop for good."""
    global _stop_reason, _requeue
    if _stop_reason is None or requeue:
        _stop_reason, _requeue = reason, requeue


def stop_requested() -> str | None:
    """Why this process was asked to stop, or None."""
    return _stop_reason


def requeue_requested() -> bool:
    return _requeue


def interrupt(reason: str, requeue: bool = False) -> None:
    """A signal handler's stop: a training loop in progress (`deferred_interrupts`) stops at its next
    step, with a checkpoint; anything else is interrupted at once (KeyboardInterrupt)."""
    request_stop(reason, requeue)
    if not _deferred:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Within the block, `interrupt` only records the request (the block checks `stop_requested`):
    a stop never lands in the middle of a step, a checkpoint or a write to the tracking store."""
    global _deferred
    before, _deferred = _deferred, True
    try:
        yield
    finally:
        _deferred = before
