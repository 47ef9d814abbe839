"""The README's Reliability section stays true: every test it names exists, and every test of
the reliability test files is named there (a new promise gets its line)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ["tests/cli/test_no_destroyed_outputs.py", "tests/io/test_nothing_lost.py",
         "tests/cli/test_nothing_leaked.py", "tests/cli/test_signals_and_pipes.py"]


def _defined(path: Path) -> set[str]:
    return set(re.findall(r"^def (test_\w+)", path.read_text(encoding="utf-8"), re.M))


def test_the_reliability_section_names_exactly_the_tests_that_hold_it():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Reliability"):text.index("## Python API")]
    named = set(re.findall(r"\b(test_\w+)\b", section)) - {Path(f).stem for f in FILES}
    named -= {"test_hardening"}
    every = set().union(*(_defined(p) for p in (ROOT / "tests").rglob("test_*.py")))
    assert sorted(named - every) == [], "the README names tests that do not exist"
    listed = set().union(*(_defined(ROOT / f) for f in FILES))
    assert sorted(listed - named) == [], "tests of the reliability files missing from the README"
