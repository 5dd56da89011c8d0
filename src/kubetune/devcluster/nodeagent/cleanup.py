"""Remove what an agent that did not stop cleanly left on the host (its bridge, pod network
namespaces and veths; its pods' processes died with it)."""

from __future__ import annotations

import json
from pathlib import Path

from kubetune.devcluster.nodeagent import network


def cleanup(state_dir: Path) -> bool:
    """Tear down the network recorded in ``state_dir``; True if there was one."""
    record = state_dir / "resources.json"
    try:
        index = int(json.loads(record.read_text())["bridge_index"])
    except (OSError, ValueError, KeyError):
        return False
    network.destroy(index)
    record.unlink(missing_ok=True)
    return True
