"""The one place that chooses between the C accelerators and their pure-Python twins.

``WSPROXY_NO_EXTENSIONS=1`` forces the pure build; otherwise the compiled modules in
``wsproxy._ext`` are used when they import. ``IMPLEMENTATION`` is ``"c"`` or ``"py"``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

NO_EXTENSIONS = bool(os.environ.get("WSPROXY_NO_EXTENSIONS"))

if TYPE_CHECKING or NO_EXTENSIONS:
    from wsproxy.protocol.frames import (
        Frame,
        FrameReader,
        FrameTracker,
        Message,
        MessageAssembler,
        build_close,
        build_frame,
    )
    from wsproxy.protocol.http_head import rewrite_head, scan_fields
    from wsproxy.protocol.mask import apply_mask
    from wsproxy.protocol.relay_core import RelayCore

    IMPLEMENTATION = "py"
else:
    try:
        from wsproxy._ext.frames import (
            Frame,
            FrameReader,
            FrameTracker,
            Message,
            MessageAssembler,
            build_close,
            build_frame,
        )
        from wsproxy._ext.http_head import rewrite_head, scan_fields
        from wsproxy._ext.mask import apply_mask
        from wsproxy._ext.relay_core import RelayCore

        IMPLEMENTATION = "c"
    except ImportError:  # not built (source checkout, or a failed optional build)
        from wsproxy.protocol.frames import (
            Frame,
            FrameReader,
            FrameTracker,
            Message,
            MessageAssembler,
            build_close,
            build_frame,
        )
        from wsproxy.protocol.http_head import rewrite_head, scan_fields
        from wsproxy.protocol.mask import apply_mask
        from wsproxy.protocol.relay_core import RelayCore

        IMPLEMENTATION = "py"

__all__ = [
    "Frame",
    "FrameReader",
    "FrameTracker",
    "Message",
    "MessageAssembler",
    "build_close",
    "build_frame",
    "RelayCore",
    "apply_mask",
    "rewrite_head",
    "scan_fields",
    "IMPLEMENTATION",
    "NO_EXTENSIONS",
]
