"""Background gc: every instance wakes up, but only the holder of the 'gc' lease collects."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from starlette.concurrency import run_in_threadpool

from session_service.errors import StoreError
from session_service.store import SessionStore

log = logging.getLogger(__name__)


async def run_gc_forever(store: SessionStore, interval: float) -> None:
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    lease_ms = int(interval * 2000) + 1000
    while True:
        await asyncio.sleep(interval)
        try:
            if await run_in_threadpool(store.acquire_lease, "gc", holder, lease_ms):
                deleted = await run_in_threadpool(store.gc)
                if deleted:
                    log.info("gc deleted %d expired sessions", deleted)
        except StoreError as error:
            log.warning("background gc skipped: %s", error)
        except Exception:
            log.exception("background gc failed")
