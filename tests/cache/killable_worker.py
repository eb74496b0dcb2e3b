"""The job worker with a pause inside the cache write, for the kill -9 campaign.

``python -m tests.cache.killable_worker`` (same arguments as coherence.cache.worker). When it
stores a result it forces the value into a file (as large results are), writes the file,
creates ``$KILL_MARKER`` and sleeps ``$KILL_WRITE_PAUSE`` seconds before diskcache commits the
row: a SIGKILL then lands mid-write.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from coherence.cache import store
from coherence.cache.worker import main

_original = store.SafeDisk.store


def _store_slowly(self, value, read, key=store.diskcache.core.UNKNOWN):
    if not (isinstance(key, str) and key.startswith("result:")):
        return _original(self, value, read, key=key)
    self.min_file_size = 0  # through a value file, whatever the size
    stored = _original(self, value, read, key=key)
    if marker := os.environ.get("KILL_MARKER"):
        Path(marker).write_text("writing")
    time.sleep(float(os.environ.get("KILL_WRITE_PAUSE", "0")))
    return stored


if __name__ == "__main__":
    store.SafeDisk.store = _store_slowly
    sys.exit(main())
