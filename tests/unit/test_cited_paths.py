"""Every repository file the docs, docstrings and comments cite exists, and every cited
test (``<path>::test_name``) is defined there: a renamed or deleted file cannot leave
a claim pointing at nothing."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOP = ("tests", "benchmarks", "hack", "examples", "docs", "trainer", "operator", "src", "charts")
TEXT = (".md", ".py", ".yaml", ".yml", ".toml", ".txt", ".cfg")
#: a repository path with a file extension, optionally ``::test_name[param]``
CITED = re.compile(
    rf"(?<![\w/.-])((?:{'|'.join(TOP)})/[\w/.-]*?\.(?:py|md|ya?ml|json|sh|toml))(?![\w-])"
    r"(?:::(\w+))?"
)


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split()
        files = [REPO / name for name in out]
    except (OSError, subprocess.CalledProcessError):  # an unpacked source tree
        files = [p for p in REPO.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts]
    return [p for p in files if p.suffix in TEXT and p.is_file()]


def cited_paths() -> list[tuple[Path, str, str | None]]:
    """(citing file, cited path, cited test name or None) for every citation."""
    cites = []
    for source in _tracked_text_files():
        for match in CITED.finditer(source.read_text(errors="replace")):
            cites.append((source, match.group(1), match.group(2)))
    return cites


def _missing(source: Path, cited: str, name: str | None) -> str | None:
    # relative to the repository or, for a Markdown link, to the citing file
    target = next((p for p in (REPO / cited, source.parent / cited) if p.is_file()), None)
    if target is None:
        return f"{source.relative_to(REPO)} cites {cited}, which does not exist"
    if name and not re.search(rf"^\s*(?:async )?(?:def|class) {name}\b", target.read_text(), re.M):
        return f"{source.relative_to(REPO)} cites {cited}::{name}, which is not defined there"
    return None


def test_the_scan_finds_citations() -> None:
    cites = cited_paths()
    assert len(cites) > 50
    assert any(path == "tests/trainer/test_dpo_matches_trl.py" for _, path, _ in cites)


def test_every_cited_file_exists() -> None:
    problems = [p for c in cited_paths() if (p := _missing(*c)) is not None]
    assert not problems, "\n".join(sorted(set(problems)))


def test_a_missing_file_and_an_undefined_test_are_reported() -> None:
    source = REPO / "README.md"
    methods = "tests/trainer/test_methods.py"
    assert _missing(source, "tests/trainer/" + "test_no_such_file.py", None)
    assert _missing(source, methods, "test_no_such_" + "test")
    assert _missing(source, methods, "test_lora_merged_export_matches_adapter") is None
