"""The device API at its published place: ``from edgekit import runtime; runtime.load(path)``.

The code lives in :mod:`edgekit.device.runtime`; this name is the same module object (not a
copy), so ``edgekit.runtime is edgekit.device.runtime``.
"""

import sys

from edgekit.device import runtime as _runtime

sys.modules[__name__] = _runtime
