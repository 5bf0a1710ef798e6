"""Faulting memory in ahead of use, and syncing a range of a shared file mapping.

Both go through libc with ctypes, which releases the GIL during the call: a
background thread can fault in megabytes while the agent's thread keeps running.
On a VM a first write to a fresh page can cost tens of microseconds (the host backs
the page then), so a column or log written row by row stalls about once per page
unless its pages were faulted in by someone else first. Elsewhere than Linux, or on a
kernel without ``MADV_POPULATE_WRITE`` (5.14+), ``populate`` does nothing and pages
fault lazily as before.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import sys

import numpy as np

logger = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE
_MADV_POPULATE_WRITE = 23
_MS_SYNC = 4  # Linux's value


def _libc() -> ctypes.CDLL | None:
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        for function in (libc.madvise, libc.msync):
            function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()
_unsupported = False  # the kernel said EINVAL once: do not ask again


def populate(address: int, length: int) -> None:
    """Fault in the pages of ``[address, address + length)`` writable, without the GIL.

    The range must stay mapped during the call: hold a reference to its owner.
    """
    global _unsupported
    start = address // PAGE * PAGE
    length += address - start
    if _LIBC is None or _unsupported or length <= 0:
        return
    if _LIBC.madvise(start, length, _MADV_POPULATE_WRITE):
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOSYS):
            _unsupported = True
        else:
            logger.debug("faulting in %d bytes failed: %s", length, os.strerror(code))


def populate_array(array: np.ndarray) -> None:
    """``populate`` the memory of a contiguous array (the caller keeps it alive)."""
    if array.size:
        populate(array.ctypes.data, array.nbytes)


def sync_range(address: int, length: int) -> bool:
    """msync(MS_SYNC) a range of a shared file mapping; False where msync is not at
    hand (the caller fsyncs the file instead). Raises OSError if it fails."""
    if _LIBC is None:
        return False
    start = address // PAGE * PAGE
    if _LIBC.msync(start, length + address - start, _MS_SYNC):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return True
