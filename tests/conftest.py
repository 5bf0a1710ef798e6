"""Suite-wide set-up: temporary files live in memory where the machine has a tmpfs.

Every store, table and stage a test makes is a temporary directory, and the suite
makes tens of thousands of small files and fsyncs (20,000 single-row LanceDB commits
alone); none of the tests is about the disk, and a tmpfs halves their time. Child
processes inherit ``TMPDIR``. An explicit ``TMPDIR`` is left alone.
"""

from __future__ import annotations

import os
import tempfile

TMPFS = "/dev/shm"

if "TMPDIR" not in os.environ and os.path.isdir(TMPFS) and os.access(TMPFS, os.W_OK):
    os.environ["TMPDIR"] = TMPFS
    tempfile.tempdir = None  # re-read TMPDIR on the next gettempdir()
