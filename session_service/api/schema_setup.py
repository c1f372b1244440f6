"""Creating the schema at start-up, until it is done: the database may be down then.

A service that starts while MariaDB is restarting must not run for ever without
its tables. Until the migration has succeeded, /readyz answers 503 with the reason,
and the migration is tried again with backoff (1 s doubling to 30 s). A table of
another application in the way (SchemaConflict) is not retried: the operator has
to act, and /readyz says what to do.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.concurrency import run_in_threadpool

from session_service.schema import SchemaConflict, migrate
from session_service.store import SessionStore

log = logging.getLogger(__name__)


class SchemaSetup:
    """The start-up migration's state, for /readyz."""

    def __init__(self, store: SessionStore, enabled: bool) -> None:
        self.store = store
        #: None once the schema is in place (or migration is off), else why it is not
        self.problem: str | None = "schema migration has not run yet" if enabled else None

    async def run_until_done(self, first_delay: float = 1.0, max_delay: float = 30.0) -> None:
        delay = first_delay
        while True:
            try:
                await run_in_threadpool(migrate, self.store.engine)
            except SchemaConflict as error:
                self.problem = f"schema: {error}"
                log.error("schema migration refused: %s", error)
                return
            except Exception as error:  # database down, no permission, ...
                self.problem = f"schema migration failed: {error}"
                log.error("schema migration failed (trying again in %.0f s): %s", delay, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
            else:
                self.problem = None
                return
