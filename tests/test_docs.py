"""docs/ stays true: the stats table is the code's, every relative link lands, and every
sr-batch command line in a bash block is one the CLI accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from sr_batch import stats
from sr_batch.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", flags=re.M | re.S)


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def anchors_of(path: Path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens, -N for repeats."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", FENCE.sub("", path.read_text()), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


def test_stats_table_is_generated_from_the_code():
    text = (ROOT / "docs" / "stats.md").read_text()
    table = "".join(line + "\n" for line in text.splitlines() if line.startswith("|"))
    assert table == stats.schema_markdown()  # regenerate: see the command in docs/stats.md


def test_anchor_slugs_follow_github():
    page = ROOT / "docs" / "formats.md"
    assert "images-above---max-pixels" in anchors_of(page)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_land(page):
    text = FENCE.sub("", page.read_text())
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors_of(linked):
            broken.append(target)
    assert not broken, f"{page_id(page)}: links to nothing: {broken}"


def bash_commands(text: str) -> list[list[str]]:
    """Every command in the page's bash blocks as words: continuations joined, quotes that span
    lines kept together, `VAR="..."` lines substituted, `ENV=x` prefixes and comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        variables: dict[str, str] = {}
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            pending += line + "\n"
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # a quote still open: the command goes on
                continue
            pending = ""
            assignment = re.fullmatch(r'(\w+)="(.*)"', line)
            if assignment:
                variables[assignment[1]] = assignment[2]
                continue
            words = [w for word in words for w in (shlex.split(variables[word[1:]])
                                                    if word.startswith("$") and word[1:] in variables
                                                    else [word])]
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]
            if words:
                commands.append(words)
    return commands


def test_bash_commands_are_found():
    commands = bash_commands((ROOT / "docs" / "reports.md").read_text())
    assert ["sr-batch", "report", "out/", "--sql",
            "SELECT error_type, count(*) n, any_value(source_uri) FROM stats\n"
            "                            WHERE status = 'failed' GROUP BY 1 ORDER BY n DESC"] in commands


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_command_lines_parse(page):
    checked = 0
    for words in bash_commands(page.read_text()):
        if words[0] == "python" and words[1] == "jobs/upscale.py":
            words = ["sr-batch", "run", *words[2:]]
        elif words[0] == "python" and words[1] in ("jobs/train.py", "jobs/evaluate.py"):
            from sr_batch.models import evaluation, training

            module = training if words[1] == "jobs/train.py" else evaluation
            module.parse_args(words[2:])
            checked += 1
            continue
        if not words[0].endswith("sr-batch"):
            continue
        args = build_parser().parse_args(words[1:])
        if args.command in ("train", "evaluate"):
            from sr_batch.models import evaluation, training

            (training if args.command == "train" else evaluation).parse_args(words[2:])
        checked += 1
    if page.name in ("README.md", "models.md", "operations.md", "reports.md"):
        assert checked, f"no command lines found in {page_id(page)}"


def test_every_module_is_on_the_module_map():
    """docs/design.md's "Where each stage lives" names every module of the package."""
    section = (ROOT / "docs" / "design.md").read_text().split("## Where each stage lives", 1)[1]
    section = section.split("\n## ", 1)[0]
    missing = []
    for path in sorted((ROOT / "sr_batch").rglob("*.py")):
        if path.name == "__init__.py":
            continue
        relative = path.relative_to(ROOT)
        if len(relative.parts) == 2:  # sr_batch/x.py: its own row
            named = f"`{relative.as_posix()}`" in section
        else:  # sr_batch/pkg/x.py: by name in its package's row
            row = next((line for line in section.splitlines()
                        if line.startswith(f"| `sr_batch/{relative.parts[1]}/`")), "")
            named = f"`{path.stem}`" in row
        if not named:
            missing.append(relative.as_posix())
    assert not missing, f"modules missing from docs/design.md's module map: {missing}"
