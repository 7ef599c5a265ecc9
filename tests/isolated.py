"""Settings for a test on the session's broker and Redis, with names no other test uses.

Every stack gets its own topic prefix and consumer group: reusing the group of a killed
process stalls Tansu for ~30 s, and shared topics would mix tests' events.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from ops.settings import Settings


def isolated_settings(services: Any, data_dir: Path, name: str, **overrides: Any) -> Settings:
    unique = f"lp-{name}-{uuid.uuid4().hex[:8]}"
    values: dict[str, Any] = {
        "_env_file": None,
        "broker_url": services.broker_url,
        "redis_url": services.redis_url,
        "app_id": unique,
        "topic_prefix": unique,
        "data_dir": data_dir,
        "http_port": 0,
        "worker_http_port": 0,
        "partitions": 2,
    }
    values.update(overrides)
    return Settings(**values)
