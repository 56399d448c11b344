"""The documentation: the README and the docs site (docs/, mkdocs.yml) show no command that fails.

* ``mkdocs build --strict`` passes (broken links, anchors and API references are errors);
* the README stays short (at most 250 lines);
* every fenced code block of the README and of docs/**/*.md is checked by its language:
  ``python`` blocks run (in a scratch folder, the repository on the path); ``sh``/``bash``/
  ``console`` blocks have each ``workbench ...`` line parsed by the real command-line app (the
  console script's, so this follows the CLI wherever it lives), each ``make ...`` line name
  Makefile targets and each ``python -m MODULE`` / ``python FILE.py`` name one that exists;
  ``yaml`` and ``json`` blocks parse (a sweep file is validated). A block that cannot run here
  (it needs a finished run or an unmerged API) is preceded by ``<!-- skip: why -->``; it is still
  compiled, its imports are executed and every name it uses must be defined or imported in it.
* the README's table of commands is parsed like a shell block, and its links resolve; the CLI
  reference has a heading for every command; every shipped prompt set is documented.

Markdown is parsed with markdown-it-py (CommonMark), not with regular expressions.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 250
SHELL = {"sh", "bash", "shell", "console"}
LANGUAGES = SHELL | {"python", "yaml", "json", "text"}
SKIP = re.compile(r"<!--\s*skip:\s*(?P<why>.+?)\s*-->", re.S)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the reason given in a preceding <!-- skip: ... --> comment

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def tokens_of(path: Path) -> list:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table").parse(path.read_text(encoding="utf-8"))


def blocks(path: Path) -> list[Block]:
    tokens = tokens_of(path)
    found = []
    for i, token in enumerate(tokens):
        if token.type != "fence":
            continue
        before = tokens[i - 1] if i else None
        skip = (SKIP.search(before.content) if before is not None and before.type == "html_block"
                else None)
        found.append(Block(path, token.map[0] + 1, token.info.strip().split(" ")[0].lower(),
                           token.content, skip.group("why") if skip else None))
    return found


def table_commands(path: Path) -> list[Block]:
    """Commands written as inline code in table cells, as one-line shell blocks (used for the
    README's table of commands; tables elsewhere name commands in passing)."""
    found, in_table = [], False
    for token in tokens_of(path):
        in_table = (in_table or token.type == "table_open") and token.type != "table_close"
        if in_table and token.type == "inline":
            for child in token.children or []:
                words = child.content.split(" ")
                if child.type == "code_inline" and words[0] in {"workbench", "make"}:
                    found.append(Block(path, token.map[0] + 1, "sh", child.content + "\n", None))
    return found


ALL_BLOCKS = [b for path in doc_files() for b in blocks(path)]
TABLE_COMMANDS = table_commands(README)


def _ids(items: list[Block]) -> list[str]:
    return [b.where for b in items]


def of(*langs: str) -> list[Block]:
    return [b for b in ALL_BLOCKS if b.lang in langs]


# --- the site and the README ------------------------------------------------------------------


def test_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                          str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "index.html").is_file()


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, \
        f"README.md has {n} lines (at most {MAX_README_LINES}): move detail to docs/"


def test_every_code_block_names_a_known_language():
    bad = [f"{b.where}: {b.lang or '(none)'}" for b in ALL_BLOCKS if b.lang not in LANGUAGES]
    assert not bad, f"fenced blocks need one of {sorted(LANGUAGES)} ('text' for output): {bad}"


def test_no_table_is_broken():
    """A table interrupted by a blank line leaves its rest as a paragraph of pipes."""
    bad = []
    for path in doc_files():
        tokens = tokens_of(path)
        for i, token in enumerate(tokens):
            if token.type == "paragraph_open" and tokens[i + 1].content.lstrip().startswith("|"):
                bad.append(f"{path.relative_to(ROOT)}:{token.map[0] + 1}")
    assert not bad, f"table rows outside a table (a blank line inside a table?): {bad}"


def test_every_shipped_prompt_set_is_documented():
    page = (DOCS / "prompts.md").read_text(encoding="utf-8")
    missing = [p.name for p in sorted((ROOT / "data").glob("*.jsonl"))
               if f"`data/{p.name}`" not in page]
    assert not missing, f"docs/prompts.md does not describe {missing}"


def test_the_checks_see_the_blocks():
    """The parser finds blocks of every kind checked below (a guard against checking nothing)."""
    assert {"python", "yaml"} <= {b.lang for b in ALL_BLOCKS}
    assert any(b.lang in SHELL for b in ALL_BLOCKS)
    assert any("workbench " in line for b in of(*SHELL) for line in b.code.splitlines())


def slug(text: str) -> str:
    """Python-Markdown's toc slug (the anchors mkdocs checks)."""
    text = re.sub(r"[^\w\s-]", "", text.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def headings(path: Path) -> set[str]:
    tokens = tokens_of(path)
    return {slug(tokens[i + 1].content) for i, t in enumerate(tokens) if t.type == "heading_open"}


def test_readme_links_resolve():
    """The README is outside the site, so mkdocs does not check it: its relative links must name
    files that exist, and their anchors headings of those files."""
    bad = []
    for token in tokens_of(README):
        for child in token.children or []:
            href = child.attrs.get({"link_open": "href", "image": "src"}.get(child.type, ""))
            if not href or re.match(r"[a-z]+:", href):
                continue
            target, _, anchor = href.partition("#")
            path = (README.parent / target) if target else README
            if not path.exists():
                bad.append(f"{href}: no file {target}")
            elif anchor and path.suffix == ".md" and anchor not in headings(path):
                bad.append(f"{href}: no heading #{anchor} in {target}")
    assert not bad, bad


def cli_paths(command, prefix=("workbench",)) -> list[str]:
    paths = [" ".join(prefix)]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        if not getattr(sub, "hidden", False):
            paths += cli_paths(sub, (*prefix, name))
    return paths


def test_cli_reference_covers_every_command():
    documented = {t.content.strip("` ") for t in tokens_of(DOCS / "cli.md") if t.type == "inline"}
    missing = [p for p in cli_paths(cli_command())[1:] if p not in documented]
    assert not missing, f"docs/cli.md has no heading for {missing}"


# --- shell blocks -----------------------------------------------------------------------------


def shell_commands(block: Block) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, heredoc bodies and comments
    dropped, ``$ `` prompts required in console blocks, split at ``&&``, ``||``, ``;`` and ``|``."""
    lines = block.code.replace("\\\n", " ").splitlines()
    commands, heredoc = [], None
    for line in lines:
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        if block.lang == "console":
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        if m := re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line):
            heredoc = m.group(1)
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in words + [";"]:
            if word in {"&&", "||", ";", "|"}:
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


def program(command: list[str]) -> tuple[str, list[str]]:
    """(program name, arguments), past leading VAR=value assignments and any path prefix."""
    i = 0
    while i < len(command) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", command[i]):
        i += 1
    if i == len(command):
        return "", []
    return command[i].rsplit("/", 1)[-1], command[i + 1:]


@cache
def cli_command():
    """The click command behind the ``workbench`` console script, wherever the CLI lives (typer
    builds it with its own copy of click, so the code below goes by behaviour, not by class)."""
    import typer

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "workbench"]
    target = script.load()
    if isinstance(target, typer.Typer):
        return typer.main.get_command(target)
    if hasattr(target, "make_context"):  # already a click command
        return target
    module = sys.modules[target.__module__]
    app = getattr(module, "app", None)
    if not isinstance(app, typer.Typer):
        apps = [v for v in vars(module).values() if isinstance(v, typer.Typer)]
        assert apps, f"no Typer app in {module.__name__} (console script {script.value})"
        app = max(apps, key=lambda a: len(a.registered_commands) + len(a.registered_groups))
    return typer.main.get_command(app)


def parse_workbench(args: list[str]) -> str | None:
    """Parse ``workbench ARGS`` down to the leaf command, as the real CLI would, without running
    it. Returns the parser's message for an unknown command or option, a missing required one or
    a bad value, else None."""
    command = cli_command()
    try:
        ctx = command.make_context("workbench", list(args), resilient_parsing=False)
        while hasattr(command, "commands") and hasattr(command, "resolve_command"):  # a group
            protected = (ctx._protected_args if hasattr(ctx, "_protected_args")
                         else ctx.protected_args)  # click < 8.2
            rest = [*protected, *ctx.args]
            if not rest:
                break
            name, command, rest = command.resolve_command(ctx, rest)
            ctx = command.make_context(name, rest, parent=ctx, resilient_parsing=False)
    except Exception as err:  # click's (typer's copy of click's) exceptions
        if type(err).__name__ == "Exit":  # --help and friends
            return None if err.exit_code == 0 else f"exit code {err.exit_code}"
        if hasattr(err, "format_message"):
            return err.format_message()
        raise
    return None


@cache
def make_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return frozenset(m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


SHELL_BLOCKS = of(*SHELL) + TABLE_COMMANDS


def test_the_command_check_catches_mistakes(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert parse_workbench(["runs", "show", "some-run"]) is None
    assert parse_workbench(["atlas", "compare", "a", "b"]) is None
    assert parse_workbench(["no-such-command"])
    assert parse_workbench(["run", "--prompts", "data/ioi.jsonl", "--no-such-option"])
    assert parse_workbench(["run", "--probes", "attention_entropy"])  # --prompts is required
    assert parse_workbench(["figures", "compose"])  # the spec argument is required
    assert shell_commands(Block(ROOT, 1, "sh", "cat > a <<'X'\nworkbench nope\nX\nmake demo && \\\n"
                                "  workbench runs  # list\n", None)) == [["cat", ">", "a", "<<X"],
                                                                         ["make", "demo"],
                                                                         ["workbench", "runs"]]


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=_ids(SHELL_BLOCKS))
def test_shell_block_commands_exist(block, monkeypatch):
    monkeypatch.chdir(ROOT)  # relative paths in the docs are relative to the repository root
    checked = 0
    for command in shell_commands(block):
        name, args = program(command)
        if name == "workbench":
            error = parse_workbench(args)
            assert error is None, f"{block.where}: `workbench {shlex.join(args)}`: {error}"
            checked += 1
        elif re.fullmatch(r"python3?", name) and args[:1] == ["-m"] and len(args) > 1:
            import importlib.util

            assert importlib.util.find_spec(args[1]) is not None, \
                f"{block.where}: `python -m {args[1]}`: no such module"
            checked += 1
        elif re.fullmatch(r"python3?", name) and args and args[0].endswith(".py"):
            assert (ROOT / args[0]).is_file(), f"{block.where}: `python {args[0]}`: no such file"
            checked += 1
        elif name == "make":
            targets = [a for a in args if not a.startswith("-") and "=" not in a]
            unknown = [t for t in targets if t not in make_targets()]
            assert not unknown, f"{block.where}: `make {shlex.join(args)}`: no target {unknown}"
            checked += 1
    if block.skip is None and not checked:
        pytest.skip("no workbench or make command in this block")


# --- python blocks ----------------------------------------------------------------------------


def unbound_names(code: str) -> set[str]:
    """Names a snippet reads but neither defines, imports nor gets from builtins."""
    tree = ast.parse(code)
    bound = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return used - bound


def run_python(code: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run a snippet in ``cwd``, a scratch folder where ``data/`` is the repository's (the docs'
    paths are relative to the repository root; what a snippet writes stays in the scratch)."""
    if not (cwd / "data").exists():
        (cwd / "data").symlink_to(ROOT / "data", target_is_directory=True)
    env = {**os.environ, "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


PYTHON_BLOCKS = of("python")


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=_ids(PYTHON_BLOCKS))
def test_python_block_runs(block, tmp_path):
    missing = unbound_names(block.code)
    assert not missing, \
        f"{block.where}: names used but never defined or imported: {sorted(missing)}"
    code = block.code
    if block.skip is not None:  # what can run here: its imports
        tree = ast.parse(code)
        code = "\n".join(ast.unparse(n) for n in tree.body
                         if isinstance(n, (ast.Import, ast.ImportFrom)))
    out = run_python(code, tmp_path)
    assert out.returncode == 0, f"{block.where} failed:\n{out.stderr[-3000:]}"
    if block.skip is not None:
        pytest.skip(f"imports checked; not run: {block.skip}")


# --- data blocks ------------------------------------------------------------------------------


@pytest.mark.parametrize("block", of("yaml", "json"), ids=_ids(of("yaml", "json")))
def test_data_block_parses(block):
    """YAML and JSON blocks parse; a sweep file (models, prompt_sets, jobs) is also validated as
    `workbench sweep` validates it before loading anything, its paths relative to the repository."""
    data = yaml.safe_load(block.code) if block.lang == "yaml" else json.loads(block.code)
    if isinstance(data, dict) and {"models", "prompt_sets", "jobs"} <= data.keys():
        from sweeps.spec import parse_spec

        parse_spec(data, ROOT, source=block.where)


def test_skip_markers_give_a_reason():
    """A ``<!-- skip: ... -->`` comment is only for blocks that cannot run here; it says why."""
    for b in ALL_BLOCKS:
        if b.skip is not None:
            assert len(b.skip) >= 10, f"{b.where}: say why the block is skipped"
