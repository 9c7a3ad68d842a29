"""The manifest schema's former import path: `alctl.manifest` is `alctl.config` (same module object, same classes)."""

from __future__ import annotations

import sys

from alctl import config

sys.modules[__name__] = config
