"""Child processes of a node (nginx, FFmpeg) that must never outlive it."""

from __future__ import annotations

import ctypes
import signal
import subprocess

PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """preexec_fn: the child gets `signum` (SIGKILL by default) when the process that started
    it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signum)


def stop(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM,
         timeout: float = 20) -> None:
    """Ask a child to stop with `signum`; SIGKILL it if it is still there after `timeout`."""
    if process.poll() is not None:
        return
    process.send_signal(signum)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
