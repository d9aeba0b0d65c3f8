"""The README and the docs/ pages hold as printed: every `lit_align` command in their shell blocks parses
(through `--print_config`, which resolves every config file and option without training), so a renamed option or
config breaks CI, not users; and every relative link reaches its file (and, into a markdown page, its heading).
Commands of other programs (python scripts, tensorboard) are the scripts' own tests' business."""

import re
import shlex
from pathlib import Path

import pytest
from conftest import REPO

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
FENCED = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def shell_commands(page: Path) -> list[list[str]]:
    """The arguments of each `lit_align ...` (or `.venv/bin/lit_align ...`) in a page's shell blocks."""
    commands = []
    for lang, body in FENCED.findall(page.read_text()):
        if lang not in ("bash", "sh", ""):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.split(r"\s#\s", line)[0].strip()  # a trailing comment
            for part in line.split("&&"):
                found = re.match(r"^(?:\.venv/bin/)?lit_align\s+(.*)$", part.strip())
                if found:
                    commands.append(shlex.split(found.group(1)))
    return commands


README_COMMANDS = shell_commands(README)
PAGE_COMMANDS = [(page, args) for page in PAGES for args in shell_commands(page)]
COMMANDS = [args for _, args in PAGE_COMMANDS]


def test_the_readme_has_its_commands():
    assert README_COMMANDS[0] == ["fit", "--config", "configs/quickstart.yaml"]  # the main command, first
    assert len(README_COMMANDS) >= 6, README_COMMANDS  # it and the Running section's daily commands
    # the README held 34 before it was split into docs/ pages (issue 23): fewer means a page or a block was lost
    assert len(COMMANDS) >= 34, COMMANDS


@pytest.mark.parametrize(
    "args", COMMANDS, ids=[f"{page.relative_to(REPO)}: {' '.join(a)}"[:90] for page, a in PAGE_COMMANDS]
)
def test_every_documented_command_parses(args, capsys, monkeypatch):
    from lit_align.cli import LitAlignCLI

    monkeypatch.chdir(REPO)
    if args[0] == "steer":  # lit_align steer (cli/steer.py): its config read and checked, nothing loaded
        from lit_align.cli.steer import parse_args, read_config

        spec, policy, data = read_config(parse_args(args[1:]))
        assert policy.name and data.val_sources
        return
    if args[0] == "score":  # lit_align score (cli/score.py): its options parsed, nothing loaded or scored
        from lit_align.cli.score import parse_args

        parsed = parse_args(args[1:])
        assert parsed.model and parsed.data and parsed.out
        return
    assert args[0] in ("fit", "validate", "test", "predict"), f"a documented command this test cannot check: {args}"
    with pytest.raises(SystemExit) as exit_info:
        LitAlignCLI(args=[a for a in args if a != "--print_config"] + ["--print_config"])
    out = capsys.readouterr()
    assert exit_info.value.code in (0, None), out.err[-2000:]
    assert "class_path: lit_align.objectives" in out.out


def prose(text: str) -> str:
    """A page without its fenced blocks and inline code, where `[x](y)` and `# x` are not links or headings."""
    return re.sub(r"`[^`\n]*`", "", FENCED.sub("", text))


def anchors(page: Path) -> set[str]:
    """The heading anchors GitHub gives a markdown page: lower case, punctuation dropped, spaces as hyphens,
    a repeated heading numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", FENCED.sub("", page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


def relative_links(page: Path) -> list[str]:
    """The targets of a page's `[text](target)` and `![alt](target)` links that are not web addresses."""
    targets = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose(page.read_text()))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]  # http:, https:, mailto:


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_relative_link_reaches_its_target(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    assert DOCS, "no docs/*.md pages"
    assert not [p.name for p in DOCS if p.resolve() not in linked], "docs pages the README does not link"
