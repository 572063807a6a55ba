"""prctl(2) helpers (stdlib only): name a task, die with the parent."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal

PR_SET_NAME = 15  # include/uapi/linux/prctl.h
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def set_comm(name: str) -> None:
    """Set the calling thread's comm (16 bytes with the NUL, kernel TASK_COMM_LEN).

    Threads created afterwards inherit it, so call it before starting threads.
    """
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` when the parent (the thread that forked us) exits,
    so a SIGKILLed contend does not leave its lab running."""
    _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
