"""The README stays true: its test command is the one CI runs, its demo command and option
table are real CLI, and every option a user can give is documented in README.md or docs/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sr_batch.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

def subcommand(name: str):
    """The argparse parser of `sr-batch NAME`."""
    return build_parser()._subparsers._group_actions[0].choices[name]


def long_options(parser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings
            if s.startswith("--") and s != "--help"}


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(python3\.11 -m venv .*?)\n```", README)
    assert len(commands) == 2, commands  # run the job; pass the tests
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
    # The demo command is a real sr-batch command line.
    words = commands[0].split("&&")[-1].split()
    assert words[0].endswith("sr-batch")
    assert build_parser().parse_args(words[1:]).command == "demo"


def test_run_options_in_the_table_exist():
    flags = set(re.findall(r"^\| `(--[a-z0-9-]+)", README, flags=re.M))
    known = long_options(subcommand("run"))
    assert len(flags) >= 10, flags  # the table was found
    assert flags <= known, flags - known


@pytest.mark.parametrize("command", ["run", "nightly", "report", "export", "convert"])
def test_every_option_is_documented(command):
    text = "\n".join(path.read_text() for path in DOCS)
    wanted = long_options(subcommand(command))
    missing = {flag for flag in wanted
               if not re.search(r"(?<![\w-])" + re.escape(flag) + r"(?![\w-])", text)}
    assert not missing, f"sr-batch {command} options in no README.md or docs/*.md: {sorted(missing)}"
