"""Run Python code in a child process that starts from this one (os.fork), as
`python -c CODE` would run it, without the child importing torch and medbench again.

For tests whose behaviour is a process boundary but not a fresh interpreter: a limit on
the child's file sizes (a full disk), an exit code, what reaches stdout and stderr. A
fresh interpreter costs 4-5 s of CPU here (torch, timm, scikit-learn); a fork costs
milliseconds. Tests about what a fresh process imports, or about `python -m medbench`,
still start one with subprocess.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import warnings

# Python's own warning filters at start-up (as `python -c` has them, before pytest's).
_STARTUP_FILTERS = [
    ("default", None, DeprecationWarning, "__main__", 0),
    ("ignore", None, DeprecationWarning, None, 0),
    ("ignore", None, PendingDeprecationWarning, None, 0),
    ("ignore", None, ImportWarning, None, 0),
    ("ignore", None, ResourceWarning, None, 0),
]


def _child(code: str, out_fd: int, err_fd: int, file_size_limit: int | None) -> int:
    """In the child: stdout and stderr to the pipes, start-up warning filters, the limit,
    then run `code` as __main__; returns the exit code."""
    import resource

    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
    sys.stdin = io.TextIOWrapper(io.FileIO(os.open(os.devnull, os.O_RDONLY), "r"))
    warnings.filters[:] = list(_STARTUP_FILTERS)
    warnings.showwarning = warnings._showwarning_orig  # pytest's capture records them
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if file_size_limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    try:
        exec(compile("import sys\n" + code, "<string>", "exec"), {"__name__": "__main__"})
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


def _read_all(fd: int, into: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as f:
        into.append(f.read())


def run_forked(
    code: str, *, file_size_limit: int | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `code` (dedented; `sys` is imported for it) in a forked child, optionally with
    RLIMIT_FSIZE set to `file_size_limit` bytes; return its exit code, stdout and stderr as text."""
    code = textwrap.dedent(code)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        status = 1
        try:
            os.close(out_r)
            os.close(err_r)
            status = _child(code, out_w, err_w, file_size_limit)
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(BaseException):
                    stream.flush()
            os._exit(status)
    os.close(out_w)
    os.close(err_w)
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [
        threading.Thread(target=_read_all, args=(out_r, out), daemon=True),
        threading.Thread(target=_read_all, args=(err_r, err), daemon=True),
    ]
    for r in readers:
        r.start()
    returncode = _wait(pid, timeout)
    for r in readers:
        r.join(timeout=10)
    stdout = b"".join(out).decode(errors="replace")
    stderr = b"".join(err).decode(errors="replace")
    return subprocess.CompletedProcess(["<fork>", "-c", code], returncode, stdout, stderr)


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise subprocess.TimeoutExpired(["<fork>"], timeout)
        time.sleep(0.01)
