"""The documentation runs as written: every command of README.md and apps/*/README.md and the README's Python.

Conventions in those files (the test reads them; a reader sees plain shell):
- commands are the lines of ```sh blocks; a line ending in `\\` continues on the next; `# ...` after a command is a
  comment, except `# -> TEXT`, which is documented output: the command's stdout or stderr must contain TEXT;
- `<!-- doc-test: skip REASON -->` on the line before a block marks it as not run (long runs, cameras, root);
- the commands of one file run in order in one scratch folder, so a later command may use an earlier one's output;
  `examples/` and `../shared` (the data and weights the Makefile points at) are there as in a checkout.
- ```python blocks of README.md run, in order, as one script in that folder.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEKIT_SHARED", REPO.parent / "shared"))
DOCS = [REPO / "README.md", *sorted(REPO.glob("apps/*/README.md"))]
SKIP = re.compile(r"<!--\s*doc-test:\s*skip\b(.*?)-->")
FENCE = re.compile(r"^```(\w*)\s*$")
EXPECT = re.compile(r"#\s*->\s*(.+?)\s*$")


@dataclass
class Block:
    lang: str
    lines: list[str]
    line: int  # where it starts in the file
    skip: str | None  # the reason, when marked


def blocks(path: Path) -> list[Block]:
    found, current, skip = [], None, None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = FENCE.match(line)
        if current is None and fence:
            current = Block(fence.group(1), [], number, skip)
            skip = None
        elif current is not None and line.startswith("```"):
            found.append(current)
            current = None
        elif current is not None:
            current.lines.append(line)
        elif line.strip():
            marker = SKIP.search(line)
            skip = marker.group(1).strip() or "marked" if marker else None
    return found


def commands(block: Block) -> list[tuple[str, str | None]]:
    """(shell command, expected text or None) for each command of a sh block."""
    out, pending = [], ""
    for raw in block.lines:
        pending += raw.strip() if pending else raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip() + " "
            continue
        text, pending = pending.strip(), ""
        if not text or text.startswith("#"):
            continue
        expect = EXPECT.search(text)
        command = _strip_comment(text)
        out.append((command, expect.group(1) if expect else None))
    return out


def _strip_comment(text: str) -> str:
    """The command without a trailing `# comment` (a # inside quotes stays)."""
    quote = None
    for i, ch in enumerate(text):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text


def test_every_documented_command_block_is_run_or_marked():
    """Each README has something tested, and nothing runnable hides in an unmarked non-sh block."""
    for doc in DOCS:
        found = blocks(doc)
        runnable = [b for b in found if b.lang == "sh" and not b.skip]
        assert runnable, f"{doc.relative_to(REPO)}: no ```sh block runs in tests"
        for b in found:
            if b.lang == "" and any(line.lstrip().startswith("edgekit ") for line in b.lines):
                pytest.fail(f"{doc.relative_to(REPO)}:{b.line}: commands in an untagged block; tag it ```sh "
                            "(and mark it with doc-test: skip if it cannot run in tests)")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared data not found at {SHARED} (set EDGEKIT_SHARED): the documented commands need it")
    return tmp_path_factory.mktemp("docs")


def _environment(scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEKIT_DATA", "EDGEKIT_WEIGHTS", "DISPLAY")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["EDGEKIT_CONFIG"] = str(scratch / "config" / "paths.json")  # the docs' `edgekit paths --set` writes here
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    return env


def _workdir(scratch: Path, doc: Path) -> Path:
    work = scratch / doc.relative_to(REPO).parent / "work"
    work.mkdir(parents=True, exist_ok=True)
    for name in ("examples",):
        if not (work / name).exists():
            (work / name).symlink_to(REPO / name)
    up = work.parent / "shared"  # ../shared from the work folder, as beside a checkout
    if not up.exists():
        up.symlink_to(SHARED)
    return work


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_documented_commands_run(doc, scratch):
    work, env = _workdir(scratch, doc), _environment(scratch)
    subprocess.run([sys.executable, "-m", "edgekit.cli", "paths", "--set", f"data={SHARED / 'data'}",
                    f"weights={SHARED / 'weights'}"], env=env, check=True, capture_output=True, timeout=120)
    ran = 0
    for block in blocks(doc):
        if block.lang != "sh" or block.skip:
            continue
        for command, expect in commands(block):
            proc = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=600)
            where = f"{doc.relative_to(REPO)}:{block.line}: {command}"
            assert proc.returncode == 0, f"{where}\nexit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
            if expect:
                assert expect in proc.stdout + proc.stderr, f"{where}: expected {expect!r} in\n{proc.stdout[-2000:]}"
            ran += 1
    assert ran > 0


def test_readme_python_runs(scratch):
    code = "\n".join("\n".join(b.lines) for b in blocks(REPO / "README.md") if b.lang == "python" and not b.skip)
    assert code.strip(), "README.md has no Python snippet to run"
    work = scratch / "python"
    work.mkdir(exist_ok=True)
    env = _environment(scratch)
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_convention_reader(tmp_path):
    """The parser itself, on a small document."""
    doc = ("text\n```sh\nedgekit targets   # -> host\nedgekit compile --model a \\\n    --backend b  # note\n"
           "```\n<!-- doc-test: skip needs a camera -->\n```sh\nedgekit pose live --source 0\n```\n")
    path = tmp_path / "sample.md"
    path.write_text(doc)
    first, second = blocks(path)
    assert commands(first) == [("edgekit targets", "host"), ("edgekit compile --model a --backend b", None)]
    assert first.skip is None and second.skip == "needs a camera"
    assert _strip_comment("python -c 'print(\"#x\")'  # c") == "python -c 'print(\"#x\")'"
