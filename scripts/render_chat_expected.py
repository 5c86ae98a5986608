#!/usr/bin/env python3
"""Write the expected rendering of the tools conversation on the tiny qwen2 fixture's chat
template (tests/fixtures/tiny-qwen2.tools-rendering.txt), which tests/unit/chat pins:

    .venv/bin/python scripts/render_chat_expected.py > tests/fixtures/tiny-qwen2.tools-rendering.txt

It renders with modeld's own renderer; the test also compares with transformers'
``apply_chat_template`` where transformers is importable. Check the output by eye against
Qwen2.5's documented format before committing a change to it.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "unit" / "chat"))

from chat_conversations import render_fixture_tools_conversation  # noqa: E402


def main() -> int:
    sys.stdout.write(render_fixture_tools_conversation())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
