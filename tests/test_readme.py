"""The README stays true: every stats column documented, the test command is the one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from sr_batch import stats
from sr_batch.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_stats_column_is_documented():
    section = README.split("## Stats schema", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.M))
    assert documented == {name for name, _, _ in stats.COLUMNS} | {"run_id"}


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(python3\.11 -m venv .*?)\n```", README)
    assert len(commands) == 2, commands  # run the job; pass the tests
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
    # The demo command is a real sr-batch command line.
    words = commands[0].split("&&")[-1].split()
    assert words[0].endswith("sr-batch")
    assert build_parser().parse_args(words[1:]).command == "demo"


def test_run_options_in_the_table_exist():
    flags = set(re.findall(r"^\| `(--[a-z-]+)", README, flags=re.M))
    run = next(a for a in build_parser()._subparsers._group_actions[0].choices.items()
               if a[0] == "run")[1]
    known = {s for action in run._actions for s in action.option_strings}
    assert flags and flags <= known, flags - known
