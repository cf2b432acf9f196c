"""Microsoft's own Adaptive Cards parser (the `adaptivecards` npm package) run on our cards.

`.ci/run` installs the package into tests/node/node_modules; `tests/node/parse_cards.js` parses
each card with `AdaptiveCard.parse` in a `SerializationContext` for schema 1.4 and lists every
parse and `validateProperties()` message. Without node or the package the check cannot run:
`unavailable()` says why, and the tests that need it skip with that reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).parent / "node"
SCRIPT = NODE_DIR / "parse_cards.js"
PACKAGE = NODE_DIR / "node_modules" / "adaptivecards" / "dist" / "adaptivecards.js"


def unavailable() -> str | None:
    """Why the parser cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed (the adaptivecards check needs it)"
    if not PACKAGE.exists():
        return f"the adaptivecards npm package is not installed in {NODE_DIR} (.ci/run installs it)"
    return None


def problems(payloads: list[Any]) -> list[list[str]]:
    """Per payload, the messages of Microsoft's parser at version 1.4 (empty: parsed cleanly)."""
    result = subprocess.run(
        ["node", str(SCRIPT)],
        input=json.dumps(payloads, ensure_ascii=False),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = json.loads(result.stdout)
    assert isinstance(found, list) and len(found) == len(payloads)
    return found
