"""A task's identity's former import path: `alctl.identity` is `alctl.config.identity` (same module object)."""

from __future__ import annotations

import sys

from alctl.config import identity

sys.modules[__name__] = identity
