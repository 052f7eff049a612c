"""The documentation keeps up with the code.

- Every flag that ``cyclegan train --help`` prints has a row in a table of ``docs/options.md``,
  and every ``--flag`` in such a row is a real flag (a renamed or removed flag leaves a stale row,
  which fails).
- The same for ``translate``, ``export``, ``evaluate`` and ``serve`` against their tables in
  ``docs/inference.md``, and ``demo`` and ``report`` against theirs in ``docs/training.md``: a
  table belongs to the command named in the nearest heading above it (``Flags of `cyclegan x```).
- README.md stays a front door (at most 180 lines), and every relative link or image in README.md
  and docs/*.md points to a file that exists (and, with ``#anchor``, to a heading of it).

The flags come from the parsers' own ``--help`` text (the options lines), never from argparse's
private attributes, printed by the commands themselves (in this process).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import run_here

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 180

FLAG = re.compile(r"--[A-Za-z0-9_]+")
# An options line of argparse's help: two spaces, then the option strings ("-h, --help",
# "--resume [PATH]"); the description follows after two or more spaces or on the next lines,
# which are indented much further (and may start with a flag they mention: not an option line).
OPTION_LINE = re.compile(r"^  (-{1,2}[A-Za-z0-9].*)$")
# --debug is every command's (runtime.add_debug_flag): documented once, in docs/options.md
# (test_debug_is_documented_once_for_every_command), not in each command's table.
NOT_DOCUMENTED = {"--help", "--debug"}

# command -> the page holding its flag table(s)
COMMAND_PAGES = {
    "translate": DOCS / "inference.md",
    "export": DOCS / "inference.md",
    "evaluate": DOCS / "inference.md",
    "serve": DOCS / "inference.md",
    "demo": DOCS / "training.md",
    "report": DOCS / "training.md",
    "download dataset": DOCS / "download.md",
    "download model": DOCS / "download.md",
    "download inception": DOCS / "download.md",
}


def help_flags(help_text: str) -> set[str]:
    """The ``--name`` option strings of a parser's help text."""
    flags: set[str] = set()
    for line in help_text.splitlines():
        m = OPTION_LINE.match(line)
        if m:
            spec = re.split(r"\s{2,}", m.group(1), maxsplit=1)[0]
            flags.update(FLAG.findall(spec))
    return flags - NOT_DOCUMENTED


def _without_code_blocks(text: str) -> list[tuple[int, str]]:
    """The lines of a markdown file outside fenced code blocks, with their line numbers."""
    lines, fenced = [], False
    for n, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((n, line))
    return lines


def table_rows(path: Path) -> list[tuple[str, int, str]]:
    """``(heading, line number, first cell)`` of every body row of every table in ``path``; the
    heading is the nearest one above the table."""
    rows: list[tuple[str, int, str]] = []
    heading, previous_was_row, in_table = "", False, False
    for n, line in _without_code_blocks(path.read_text()):
        stripped = line.strip()
        if stripped.startswith("#"):
            heading = stripped.lstrip("#").strip()
        is_row = stripped.startswith("|")
        if is_row and previous_was_row and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", stripped):
            in_table = True  # the separator: the rows from here on are the body
        elif is_row and in_table:
            rows.append((heading, n, stripped.strip("|").split("|")[0].strip()))
        if not is_row:
            in_table = False
        previous_was_row = is_row
    return rows


@pytest.fixture(scope="module")
def command_help() -> dict[str, str]:
    """``cyclegan <command> --help`` of every documented command, 100 columns wide (argparse
    reads ``COLUMNS``), run in this process: the text a new process prints (tests/test_cli.py
    checks the entry points themselves)."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", "100")
        for command in COMMAND_PAGES:
            result = run_here(*command.split(), "--help", cwd=ROOT)
            assert result.returncode == 0, f"cyclegan {command} --help failed (status {result.returncode}):\n" \
                                           f"{result.stderr}"
            out[command] = result.stdout
    return out


def test_help_parsing_finds_option_lines_only():
    text = (
        "usage: cyclegan x [-h] [--alpha A]\n"
        "                  [--beta [B]]\n\n"
        "options:\n"
        "  -h, --help            show this help message and exit\n"
        "  --alpha A             the alpha (see\n"
        "                        --gamma for more)\n"
        "  --beta [B]            beta, unlike --delta\n"
        "  --a_very_long_option_name A_VERY_LONG_OPTION_NAME\n"
        "                        long\n"
    )
    assert help_flags(text) == {"--alpha", "--beta", "--a_very_long_option_name"}


def test_every_train_flag_has_a_row_in_options_md():
    from cyclegan.options import get_args_parser

    flags = help_flags(get_args_parser().format_help())
    assert len(flags) > 50, "the train help text parsed to suspiciously few flags"
    rows = table_rows(DOCS / "options.md")
    documented: set[str] = set()
    for heading, n, cell in rows:
        found = FLAG.findall(cell)
        assert found, f"docs/options.md:{n}: a table row whose first cell names no --flag: {cell!r}"
        documented.update(found)
    missing = sorted(flags - documented)
    assert not missing, f"flags of cyclegan train missing from the tables of docs/options.md: {missing}"
    stale = sorted(documented - flags)
    assert not stale, f"docs/options.md has table rows for flags cyclegan train does not have: {stale}"


@pytest.mark.parametrize("command", sorted(COMMAND_PAGES))
def test_every_command_flag_has_a_row_in_its_page(command, command_help):
    page = COMMAND_PAGES[command]
    flags = help_flags(command_help[command])
    assert flags, f"no flags found in the help of cyclegan {command}"
    documented: set[str] = set()
    for heading, n, cell in table_rows(page):
        if re.search(rf"`cyclegan {command}`", heading):
            documented.update(FLAG.findall(cell))
    rel = page.relative_to(ROOT)
    assert documented, f"{rel} has no flag table under a heading naming `cyclegan {command}`"
    missing = sorted(flags - documented)
    assert not missing, f"flags of cyclegan {command} missing from its table in {rel}: {missing}"
    stale = sorted(documented - flags)
    assert not stale, f"{rel} documents flags cyclegan {command} does not have: {stale}"


def test_debug_is_documented_once_for_every_command(command_help):
    from cyclegan.options import get_args_parser

    helps = {"train": get_args_parser().format_help(), **command_help}
    lacking = sorted(c for c, text in helps.items() if not re.search(r"^  --debug\b", text, re.M))
    assert not lacking, f"commands without --debug in their help: {lacking}"
    text = (DOCS / "options.md").read_text(encoding="utf-8")
    section = text.split("## When a command fails (every command)", 1)
    assert len(section) == 2, "docs/options.md has no section 'When a command fails (every command)'"
    body = section[1].split("\n## ", 1)[0]
    for needed in ("`--debug`", "CYCLEGAN_DEBUG=1", "130"):
        assert needed in body, f"the failure section of docs/options.md does not mention {needed}"


@pytest.mark.parametrize("page", sorted({p.name for p in COMMAND_PAGES.values()}))
def test_flag_rows_sit_under_a_command_heading(page):
    """A flag table on a command page belongs to a command, so that its rows are checked."""
    for heading, n, cell in table_rows(DOCS / page):
        if FLAG.search(cell):
            assert re.search(r"`cyclegan (\w+)( \w+)?`", heading), (
                f"docs/{page}:{n}: a flag row under the heading {heading!r}, which names no `cyclegan <command>`"
            )


def test_readme_is_a_front_door():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; keep it at most {README_MAX_LINES} (move detail to docs/)"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in _without_code_blocks(path.read_text()):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = _slug(m.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            out.add(slug if count == 0 else f"{slug}-{count}")
    return out


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def relative_links(path: Path) -> list[tuple[int, str]]:
    links = []
    for n, line in _without_code_blocks(path.read_text()):
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        for target in LINK.findall(line):
            if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            links.append((n, target))
    return links


MARKDOWN_FILES = [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("path", MARKDOWN_FILES, ids=[str(p.relative_to(ROOT)) for p in MARKDOWN_FILES])
def test_relative_links_resolve(path):
    rel = path.relative_to(ROOT)
    broken = []
    for n, target in relative_links(path):
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{rel}:{n}: {target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{rel}:{n}: {target} (no heading #{fragment} in {dest.relative_to(ROOT)})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_link_finder_sees_links_and_images():
    assert _slug("Several GPUs, several machines (torchrun)") == "several-gpus-several-machines-torchrun"
    assert _slug("Flags of `cyclegan translate`") == "flags-of-cyclegan-translate"
    found = [t for _, t in relative_links_from_text(
        "see [a](docs/a.md#x) and ![img](b.png \"title\"), [web](https://x.org), `[no](c.md)`\n"
        "```\n[no](d.md)\n```\n")]
    assert found == ["docs/a.md#x", "b.png"]


def relative_links_from_text(text: str) -> list[tuple[int, str]]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.md"
        p.write_text(text)
        return relative_links(p)
