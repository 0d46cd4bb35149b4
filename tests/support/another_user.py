"""Running part of a test as a user who may not read what root may: CI runs as root, which
ignores file modes, so a permission check would otherwise never be tested there."""

from __future__ import annotations

import os
from collections.abc import Callable

NOBODY = 65534


def as_another_user(action: Callable[[], str]) -> str:
    """`action()`'s answer, or the exception it raised as 'TypeName: message', computed in a
    forked child that first gives up root (becoming nobody) where this process is root.

    The child can import only what nobody may read (not this interpreter's own folder when
    it lives under /root): import what `action` needs before calling this."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        answer = "no answer"
        try:
            os.close(read_fd)
            if os.geteuid() == 0:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            answer = action()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent as text
            answer = f"{type(exc).__name__}: {exc}"
        finally:
            os.write(write_fd, answer.encode())
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        answer = fh.read()
    os.waitpid(pid, 0)
    return answer
