"""The README's library example runs as it is, so it cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def library_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Use it as a library", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "the library section has no python code block"
    return found.group(1)


def test_the_library_example_drives_a_whole_rollout_to_done(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(library_block(), encoding="utf-8")
    ran = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         check=False, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    last = ran.stdout.strip().splitlines()[-1]
    assert "done" in last, ran.stdout
    assert list(tmp_path.iterdir()) == [script]  # nothing written outside its temporary folder
