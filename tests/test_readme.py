"""Every ``>>>`` example in README.md and docs/*.md runs and prints what the page says."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


#: README.md and every docs/ page that shows examples (SPEC.md, DESIGN.md, STYLE.md are prose).
PAGES = [
    "README.md",
    *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md") if ">>> " in p.read_text()),
]


@pytest.mark.parametrize("name", PAGES)
def test_readme_examples(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    result = doctest.testfile(
        str(ROOT / name),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False,
    )
    assert result.attempted >= (20 if name == "README.md" else 3), (
        f"{name}: only {result.attempted} examples found"
    )
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    marker = readme.index("<!-- test-command -->")
    block = readme[marker:].split("```", 2)[1]
    command = block.splitlines()[1].strip()
    assert command.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci  # .ci/run extracts exactly that line
