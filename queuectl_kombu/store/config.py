"""The config table: runtime settings every process reads within a second."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from .. import settings as settings_mod
from ..sql import QUERIES as Q
from .base import StoreBase

logger = logging.getLogger("queuectl_kombu.store")

#: How long a read of the config table is reused on the hot path (claims).
SETTINGS_TTL = 1.0


class ConfigStore(StoreBase):
    """Reads and writes of the config table."""

    _settings: dict[str, Any] | None = None
    _settings_read_at = 0.0

    def settings(self, fresh: bool = False) -> dict[str, Any]:
        """Defaults overlaid with the config table, re-read at most once a second unless fresh."""
        now = time.monotonic()
        if fresh or self._settings is None or now - self._settings_read_at > SETTINGS_TTL:
            rows = {r[0]: r[1] for r in self.db.connection().execute(Q["get_config"])}
            self._settings = settings_mod.from_rows(rows)
            self._settings_read_at = now
        return dict(self._settings)

    def set_config(self, key: str, value: Any) -> tuple[str, Any]:
        """Validate and store one setting; running processes pick it up within a second."""
        name, typed = settings_mod.parse(key, value)
        with self.db.write() as conn:
            conn.execute(Q["set_config"], {"key": name, "value": json.dumps(typed)})
        self._committed()
        self._settings = None
        logger.info("config %s = %r", name, typed)
        return name, typed
