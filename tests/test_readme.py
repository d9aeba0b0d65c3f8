"""The README holds as printed: every `lit_align` command in its shell blocks parses (through `--print_config`,
which resolves every config file and option without training), so a renamed option or config breaks CI, not
users. Commands of other programs (python scripts, tensorboard) are the scripts' own tests' business."""

import re
import shlex

import pytest
from conftest import REPO

README = REPO / "README.md"


def readme_commands() -> list[list[str]]:
    """The arguments of each `lit_align ...` (or `.venv/bin/lit_align ...`) in the README's shell blocks."""
    commands = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(), re.S | re.M):
        if lang not in ("bash", "sh", ""):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.split(r"\s#\s", line)[0].strip()  # a trailing comment
            for part in line.split("&&"):
                found = re.match(r"^(?:\.venv/bin/)?lit_align\s+(.*)$", part.strip())
                if found:
                    commands.append(shlex.split(found.group(1)))
    return commands


COMMANDS = readme_commands()


def test_the_readme_has_its_commands():
    assert len(COMMANDS) >= 8, COMMANDS
    assert COMMANDS[0] == ["fit", "--config", "configs/quickstart.yaml"]  # the main command, first


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a)[:80] for a in COMMANDS])
def test_every_readme_command_parses(args, capsys, monkeypatch):
    from lit_align.cli import LitAlignCLI

    monkeypatch.chdir(REPO)
    if args[0] == "steer":  # lit_align steer (steering_cli.py): its config read and checked, nothing loaded
        from lit_align.steering_cli import parse_args, read_config

        spec, policy, data = read_config(parse_args(args[1:]))
        assert policy.name and data.val_sources
        return
    if args[0] == "score":  # lit_align score (score_cli.py): its options parsed, nothing loaded or scored
        from lit_align.score_cli import parse_args

        parsed = parse_args(args[1:])
        assert parsed.model and parsed.data and parsed.out
        return
    assert args[0] in ("fit", "validate", "test", "predict"), f"a README command this test cannot check: {args}"
    with pytest.raises(SystemExit) as exit_info:
        LitAlignCLI(args=[a for a in args if a != "--print_config"] + ["--print_config"])
    out = capsys.readouterr()
    assert exit_info.value.code in (0, None), out.err[-2000:]
    assert "class_path: lit_align.objectives" in out.out
