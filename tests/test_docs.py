"""The documentation holds against the code: README.md and docs/ (docs/_incoming/ is a staging area).

    python -m pytest tests/test_docs.py -q

Every `instrument-sweep ...` line parses with the real parser (no abbreviated flags); every
YAML block is a spec (a whole one, or keys set over the default preset); every repository
path and module in backticks exists; every relative link and anchor resolves; the generated
reference (python -m tune_jobs.reference) is current; every message an InputError can carry
is explained in docs/troubleshooting.md; the README's test command is what CI runs.
No Ray is started.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from analysis.frames import EPOCH_COLUMNS, TRIAL_COLUMNS
from analysis.storage import STORAGE_ENV
from trainables.documented import doc_of
from trainables.training.report import EpochReport
from tune_jobs.cli import build_parser
from tune_jobs.spec import DEFAULT_PRESET, SECTIONS, SweepSpec, load_spec, spec_from_dict

ROOT = Path(__file__).resolve().parents[1]
STAGING = ROOT / "docs" / "_incoming"
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if STAGING not in p.parents)]
HISTORY = ("performance.md",)  # the only pages that hold dates, timings and pass counts (with CHANGELOG.md)
SHELL = ("bash", "sh", "shell", "console", "text", "")
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1"}
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\]]|\][^(])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


@dataclasses.dataclass
class Page:
    path: Path
    prose: list[tuple[int, str]]  # (line number, text) outside code blocks
    blocks: list[tuple[int, str, str]]  # (line number of the fence, language, text) of code blocks

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT))


def read_page(path: Path) -> Page:
    prose, blocks, block, fence = [], [], None, ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        opened = FENCE.match(line)
        if block is None and opened:
            block, fence = (number, opened.group(3).lower(), []), opened.group(2)
        elif block is not None and line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
            blocks.append((block[0], block[1], "\n".join(block[2])))
            block = None
        elif block is not None:
            block[2].append(line)
        else:
            prose.append((number, line))
    assert block is None, f"{path}: the code block opened on line {block[0]} never closes"
    return Page(path, prose, blocks)


@pytest.fixture(scope="module")
def pages() -> list[Page]:
    return [read_page(path) for path in PAGES]


def code_spans(page: Page):
    for number, line in page.prose:
        for match in CODE_SPAN.finditer(line):
            yield number, match.group(2).strip()


# -- commands --------------------------------------------------------------------------------


def command_lines(page: Page):
    """(line, words after `instrument-sweep`) of every command in the page's shell blocks and code spans."""
    for start, language, text in page.blocks:
        if language not in SHELL:
            continue
        for offset, line in enumerate(text.replace("\\\n", " ").splitlines()):
            yield from commands_in(start + offset + 1, line)
    for number, span in code_spans(page):
        if span.startswith("instrument-sweep"):
            yield from commands_in(number, span)


def commands_in(number: int, line: str):
    try:
        words = shlex.split(line.lstrip("$ "), comments=True)
    except ValueError:  # not a shell line (prose in a text block)
        return
    for i, word in enumerate(words):
        if word == "instrument-sweep":
            rest = words[i + 1:]
            cut = next((j for j, w in enumerate(rest) if w in SHELL_OPERATORS), len(rest))
            yield number, rest[:cut]


def parse_error(words: list[str]) -> str | None:
    """What the real parser says against `words` (None: they parse)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(words)
    except SystemExit as exc:
        if exc.code:
            return stderr.getvalue().strip().splitlines()[-1]
    return None


def test_every_command_in_the_docs_parses_with_the_real_parser(pages):
    checked, wrong = 0, []
    for page in pages:
        for number, words in command_lines(page):
            checked += 1
            if problem := parse_error(words):
                wrong.append(f"{page.name}:{number}: instrument-sweep {shlex.join(words)}: {problem}")
    assert checked > 50 and wrong == []


def test_flags_are_never_abbreviated():
    assert "unrecognized arguments: --stor" in parse_error(["run", "--stor", "x"])
    assert parse_error(["run", "--storage", "x"]) is None


# -- specs -----------------------------------------------------------------------------------


def test_every_yaml_block_is_a_spec(pages):
    """A block with views is a whole spec; one without is keys set over the default preset."""
    checked = 0
    for page in pages:
        for start, language, text in page.blocks:
            if language != "yaml":
                continue
            checked += 1
            raw = yaml.safe_load(text)
            assert isinstance(raw, dict), f"{page.name}:{start}: not a mapping"
            try:
                spec_from_dict({"name": "example", **raw}) if "views" in raw else load_spec(DEFAULT_PRESET,
                                                                                             values=raw)
            except ValueError as exc:
                pytest.fail(f"{page.name}:{start}: {exc}")
    assert checked >= 3


def test_the_seed_preset_sets_and_comments_every_spec_key():
    """tune_jobs/sweeps/seed.yaml is the commented example of every key (the reference lists them too)."""
    text = (ROOT / "tune_jobs" / "sweeps" / "seed.yaml").read_text()
    raw = yaml.safe_load(text)
    keys = {key for key in raw if key not in SECTIONS} | {f"{section}.{key}" for section in SECTIONS
                                                          for key in raw.get(section) or {}}
    every = {f.name for f in dataclasses.fields(SweepSpec) if f.name not in SECTIONS} | {
        f"{section}.{f.name}" for section, (cls, exclude) in SECTIONS.items()
        for f in dataclasses.fields(cls) if f.name not in exclude}
    assert keys == every
    uncommented = [line for line in text.splitlines() if line.strip() and "#" not in line]
    assert uncommented == []


def test_the_documented_sweep_signature_is_the_real_one(pages):
    """docs/results.md spells out `sweep()`'s whole signature: its parameters and defaults are the code's."""
    import inspect

    from tune_jobs import sweep

    results = next(page for page in pages if page.path.name == "results.md")
    stub = next(text for _, language, text in results.blocks if language == "python" and "def sweep(" in text)
    documented = ast.parse(stub).body[0].args
    defaults = [ast.literal_eval(d) for d in documented.defaults]
    names = [a.arg for a in documented.args]
    real = inspect.signature(sweep).parameters
    assert [*names, documented.kwarg.arg] == list(real)
    real_defaults = [p.default for p in real.values() if p.default is not inspect.Parameter.empty]
    assert len(defaults) == len(real_defaults)
    storage = names.index("storage") - (len(names) - len(defaults))  # its default follows the environment
    assert [d for i, d in enumerate(defaults) if i != storage] == \
        [d for i, d in enumerate(real_defaults) if i != storage]


# -- paths, modules, links -------------------------------------------------------------------


def top_level_names() -> set[str]:
    """The repository's top-level files and folders, as git tracks them (or as they lie)."""
    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return {line.split("/")[0] for line in tracked.splitlines()}
    except (OSError, subprocess.CalledProcessError):
        return {p.name for p in ROOT.iterdir() if not p.name.startswith(".venv")}


def resolves(dotted: str) -> bool:
    """Whether `package.module.attribute` names something that exists (imports the module)."""
    parts = dotted.removesuffix("()").split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def test_every_repository_path_and_module_in_backticks_exists(pages):
    top = top_level_names() | {"LICENSE", "CHANGELOG.md"}
    module = re.compile(r"^(trainables|analysis|tune_jobs)(\.\w+)+(\(\))?$")
    missing, checked = [], 0
    for page in pages:
        for number, span in code_spans(page):
            if re.search(r"[\s<>*{}$~]", span) or span.startswith("-"):
                continue
            path = span.split("#")[0].rstrip("/:,")
            if path.split("/")[0] in top:
                checked += 1
                if not (ROOT / path).exists():
                    missing.append(f"{page.name}:{number}: {span}")
            elif module.match(span):
                checked += 1
                if not resolves(span):
                    missing.append(f"{page.name}:{number}: {span}")
    assert checked > 50 and missing == []


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Page) -> set[str]:
    found, seen = set(), {}
    for _, line in page.prose:
        if heading := HEADING.match(line):
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found.update(ANCHOR.findall(line))
    return found


def test_every_relative_link_and_anchor_resolves(pages):
    by_path = {page.path: page for page in pages}
    broken, checked = [], 0
    for page in pages:
        for number, line in page.prose:
            for target in LINK.findall(line):
                if re.match(r"^[a-z]+:", target):  # https:, mailto:
                    continue
                checked += 1
                path, _, anchor = target.partition("#")
                file = (page.path.parent / path).resolve() if path else page.path
                if not file.exists():
                    broken.append(f"{page.name}:{number}: {target}: no {path}")
                elif anchor and file.suffix == ".md":
                    target_page = by_path.get(file) or read_page(file)
                    if anchor not in anchors(target_page):
                        broken.append(f"{page.name}:{number}: {target}: no heading #{anchor}")
    assert checked > 50 and broken == []


# -- what only the performance page and the CHANGELOG hold ---------------------------------------


def test_dates_and_pass_counts_only_on_the_performance_page(pages):
    date = re.compile(r"\b20\d\d-(0[1-9]|1[0-2])\b")
    count = re.compile(r"\b\d+ (passed|failed|skipped)\b")
    iam_version = '"Version":"2012-10-17"'  # the IAM policy language's version, which a policy must name
    found = [f"{page.name}:{number}: {line.strip()}" for page in pages if page.path.name not in HISTORY
             for number, line in [*page.prose, *((s, t) for s, _, t in page.blocks)]
             if date.search(line.replace(" ", "").replace(iam_version, "")) or count.search(line)]
    assert found == []


def test_the_readme_test_command_is_the_fast_tier_and_ci_runs_it_verbatim_then_the_rest():
    readme = (ROOT / "README.md").read_text().splitlines()
    command = next(line for line in readme if "pytest" in line)
    assert command.endswith('python -m pytest -m "not slow and not cluster"'), command
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci
    assert 'python -m pytest -m "slow or cluster"' in ci[ci.index(command) + 1:]
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


# -- the generated reference, and what it is generated from --------------------------------


def test_the_generated_reference_is_current():
    env = {k: v for k, v in os.environ.items() if k != STORAGE_ENV}
    done = subprocess.run([sys.executable, "-m", "tune_jobs.reference", "--check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_every_flag_spec_key_and_column_has_its_doc():
    undocumented = []

    def walk(parser, words):
        for action in parser._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                for name, sub in action.choices.items():
                    walk(sub, (*words, name))
            elif not action.help:
                undocumented.append(f"instrument-sweep {' '.join(words)} {'/'.join(action.option_strings)}")

    walk(build_parser(), ())
    for cls in (SweepSpec, *(cls for cls, _ in SECTIONS.values()), EpochReport):
        undocumented += [f"{cls.__name__}.{f.name}" for f in dataclasses.fields(cls) if not doc_of(f)]
    undocumented += [f"trial column {name}" for name, doc in TRIAL_COLUMNS.items()
                     if doc is None and name not in {f.name for f in dataclasses.fields(EpochReport)}]
    assert undocumented == []
    assert not set(EPOCH_COLUMNS) & {f.name for f in dataclasses.fields(EpochReport)}


# -- every error line ----------------------------------------------------------------------


def literal_parts(node: ast.AST) -> list[str]:
    """The constant text of a string expression: a literal, an f-string's literal parts, a sum of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [part.value for part in node.values if isinstance(part, ast.Constant)]
    if isinstance(node, ast.BinOp):
        return literal_parts(node.left) + literal_parts(node.right)
    return []


def test_every_input_error_message_is_explained_in_troubleshooting():
    """Each `InputError(where, problem)` in the code: the longest literal part of its problem (what
    stays the same whatever the values) appears on the troubleshooting page."""
    page = " ".join((ROOT / "docs" / "troubleshooting.md").read_text().split())
    unexplained, checked = [], 0
    for package in ("trainables", "analysis", "tune_jobs"):
        for file in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text())):
                if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "InputError"
                        and len(node.args) == 2):
                    continue
                parts = [" ".join(p.split()).strip(" ;:,.(`") for p in literal_parts(node.args[1])]
                longest = max(parts, key=len, default="")
                if len(longest) < 8:  # a message passed on from elsewhere, or all values
                    continue
                checked += 1
                if longest not in page:
                    unexplained.append(f"{file.relative_to(ROOT)}:{node.lineno}: {longest!r}")
    assert checked > 100 and unexplained == []
