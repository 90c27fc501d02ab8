"""A short, key-order-independent digest of JSON-able data (params, a training run's fingerprint)."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(data: Any) -> str:
    """16 hex digits of the SHA-256 of `data` as canonical JSON."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
