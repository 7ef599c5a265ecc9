"""The scoring model in use, with hot reload of a validated file and no restart.

The worker and the collector each hold one :class:`ModelHolder`. It rereads the
model file when its modification time changes (checked at most once a second);
a file that fails validation is reported and never replaces the running model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from rules import ModelError, default_model, load_model

log = logging.getLogger(__name__)


class ModelHolder:
    def __init__(self, path: str = "", on_change: Callable[[Any], None] | None = None, check_every_s: float = 1.0) -> None:
        self.path = Path(path) if path else None
        self.on_change = on_change
        self.check_every_s = check_every_s
        self._checked = 0.0
        self._mtime = self.path.stat().st_mtime_ns if self.path else None
        self.model = load_model(str(self.path)) if self.path else default_model()
        self.last_error: str | None = None

    def current(self) -> Any:
        self.maybe_reload()
        return self.model

    def maybe_reload(self) -> bool:
        """Reload when the file changed; return True when a new model went live."""
        if self.path is None:
            return False
        now = time.monotonic()
        if now - self._checked < self.check_every_s:
            return False
        self._checked = now
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError as exc:
            self._report(f"cannot read {self.path}: {exc}; keeping version {self.model.version}")
            return False
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            model = load_model(str(self.path))
        except ModelError as exc:
            self._report(f"not loading {self.path}, keeping version {self.model.version}: {exc}")
            return False
        previous, self.model, self.last_error = self.model.version, model, None
        log.warning("scoring model reloaded: %s -> %s", previous, model.version)
        if self.on_change is not None:
            self.on_change(model)
        return True

    def _report(self, message: str) -> None:
        if message != self.last_error:
            log.error(message)
        self.last_error = message
