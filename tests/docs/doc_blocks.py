"""Fenced code blocks of the Markdown documentation, with where they are and whether they run.

A block is *runnable* when its tag is one of :data:`RUNNABLE_TAGS`; every runnable block runs in
``tests/docs/test_doc_examples.py`` unless an HTML comment ``<!-- docs-test: skip REASON -->``
sits directly above its fence. Other comment lines may sit between the marker and the fence
(``docs/distributed.md`` names its blocks with ``<!-- test: NAME -->`` for its own test), but
nothing else: a blank line or text cuts the marker off from the block.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

#: Tags whose blocks are executed; blocks of every other tag are only shown.
RUNNABLE_TAGS = frozenset({"python", "bash", "sh", "shell", "console"})
#: Tags run with bash; ``python`` blocks run in one namespace per page.
SHELL_TAGS = RUNNABLE_TAGS - {"python"}

REPO = Path(__file__).resolve().parents[2]
#: Pages written by a generator at ``mkdocs build`` time: nothing in them is hand-written.
GENERATED = ("docs/cli.md", "docs/choose_a_model.md", "docs/reference/")

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
_COMMENT = re.compile(r"^\s*<!--.*-->\s*$")
_SKIP = re.compile(r"^\s*<!--\s*docs-test:\s*skip\b(?P<reason>.*?)-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page.

    Attributes:
        page: The page, relative to the repository root (``docs/slides.md``).
        line: 1-based line number of the opening fence.
        tag: The first word of the fence's info string, lower case (``""`` when none).
        code: The block's text, dedented by the fence's indentation.
        skip: ``None`` when the block is not marked; else the marker's reason (``""`` if none).
    """

    page: str
    line: int
    tag: str
    code: str
    skip: str | None = None

    @property
    def runnable(self) -> bool:
        """Whether the tag says the block is code that runs."""
        return self.tag in RUNNABLE_TAGS

    @property
    def runs(self) -> bool:
        """Whether the doc-example test executes it (runnable and not skipped)."""
        return self.runnable and self.skip is None

    @property
    def where(self) -> str:
        """``page:line``, as a failure names it."""
        return f"{self.page}:{self.line}"


def _skip_reason(lines: list[str], fence_index: int) -> str | None:
    """The reason of a skip marker among the comment lines directly above the fence."""
    index = fence_index - 1
    while index >= 0 and _COMMENT.match(lines[index]):
        marker = _SKIP.match(lines[index])
        if marker:
            return marker.group("reason").strip()
        index -= 1
    return None


def extract_blocks(text: str, page: str) -> list[Block]:
    """Every fenced block of a Markdown text, in order.

    Args:
        text: The page's Markdown.
        page: How the blocks name their page.

    Raises:
        ValueError: A fence is never closed.
    """
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, indent = opening.group("fence"), opening.group("indent")
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = index + 1
        while end < len(lines) and not close.match(lines[end]):
            end += 1
        if end == len(lines):
            raise ValueError(f"{page}:{index + 1}: the fence opened here is never closed")
        body = [
            line[len(indent) :] if line.startswith(indent) else line
            for line in lines[index + 1 : end]
        ]
        info = opening.group("info").strip().split()
        blocks.append(
            Block(
                page=page,
                line=index + 1,
                tag=info[0].lower().strip("{}.") if info else "",
                code=textwrap.dedent("\n".join(body)) + "\n",
                skip=_skip_reason(lines, index),
            )
        )
        index = end + 1
    return blocks


def doc_pages(root: Path = REPO) -> list[Path]:
    """README.md and the hand-written pages under docs/, sorted."""
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    return [
        page
        for page in pages
        if page.exists() and not page.relative_to(root).as_posix().startswith(GENERATED)
    ]


def page_blocks(page: Path, root: Path = REPO) -> list[Block]:
    """The fenced blocks of one page file."""
    return extract_blocks(page.read_text(encoding="utf-8"), page.relative_to(root).as_posix())


def console_commands(code: str) -> str:
    """The commands of a ``console`` block: the ``$ `` lines when it has prompts, else all."""
    lines = code.splitlines()
    prompted = [line[2:] for line in lines if line.startswith("$ ")]
    return "\n".join(prompted) + "\n" if prompted else code


#: Printed before each block's output by :func:`run_blocks`, with the block's index.
MARKER = "@@docs-block {index}@@"


def _run_block(block: dict, namespace: dict) -> bool:
    """Run one block; whether it succeeded (a Python failure's traceback is printed)."""
    import linecache
    import subprocess
    import sys
    import traceback

    if block["tag"] != "python":
        code = console_commands(block["code"]) if block["tag"] == "console" else block["code"]
        return subprocess.run(["bash", "-e", "-c", code], check=False).returncode == 0
    # Padded so that tracebacks give the line numbers of the page.
    code = "\n" * block["line"] + block["code"]
    filename = block["page"]
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    try:
        exec(compile(code, filename, "exec"), namespace)
    except BaseException:  # report any failure of the example, even SystemExit
        traceback.print_exc()
        return False
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return True


def run_blocks(blocks: list[dict]) -> int:
    """Run a page's blocks in order in the current directory; 1 at the first that fails.

    Python blocks share one ``__main__`` namespace; shell blocks run with ``bash -e``. Each
    block's output follows :data:`MARKER`, so the caller can show the failing block's own,
    and ends with how long the block took.
    """
    import time

    namespace: dict = {"__name__": "__main__"}
    for index, block in enumerate(blocks):
        print(MARKER.format(index=index), flush=True)
        start = time.perf_counter()
        ok = _run_block(block, namespace)
        print(
            f"@@ {block['page']}:{block['line']} took {time.perf_counter() - start:.1f} s",
            flush=True,
        )
        if not ok:
            return 1
    return 0


if __name__ == "__main__":
    import json
    import os
    import sys

    sys.path[0] = os.getcwd()  # examples import what they write, not this folder's modules
    sys.exit(run_blocks(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))
