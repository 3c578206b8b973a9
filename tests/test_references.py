"""Every reference resolves: the repository paths and `make` targets that the docs, the
runbooks, the READMEs, the code's comments and docstrings, the Dockerfiles, the Makefile,
skaffold.yaml's comments, the chart's values and templates and the telemetry contract mention
must exist.

A path is resolved against the repository root, the mentioning file's folder, and its
workspace member (the nearest folder above it with a pyproject.toml). Glob patterns match
if anything matches; `<placeholder>`, `{placeholder}` and `...` segments stand for any name,
and `{a,b}` is expanded. URLs, run-time outputs (`.run/`, a lab's `work/`), kubectl's
`deploy/<name>` and paths a command on the same line creates are not references; nor, in a
lab, a file the stack reads only when present (deploy/stack/stack.yaml), which the learner
makes. A Markdown link must resolve relative to its page, as GitHub resolves it.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import io
import os
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Folders never scanned: local state, caches, tools' environments.
SKIP_DIRS = {
    ".git", ".venv", ".run", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
    "node_modules", "dist", "build", "heldout",
}  # fmt: skip
TOP_LEVEL = ("services", "deploy", "docs", "runbooks", "dashboards", "tools", "labs", "scripts", "tests", ".ci")  # fmt: skip
ROOT_FILES = ("skaffold.yaml", "Makefile", ".dockerignore", "conftest.py")

# Made at run time, never committed: `.run/` (local mode's state and logs) and a learner's
# lab workspace, `labs/<id>/work/`.
RUNTIME_OUTPUT = re.compile(r"(^|/)\.run/|^labs/.+/work(/|$)")
# A path a command on the same line creates (a lab's instructions, say) is not a reference:
# mkdir's argument, the destination of a two-argument cp or mv, a redirection's target.
_CREATED = re.compile(
    r"\bmkdir\s+(?:-p\s+)?(\S+)|\b(?:cp|mv)\s+(?:-\w+\s+)*\S+\s+(\S+)(?=\s*(?:$|&&|;|\||>|#))|(?:^|\s)>>?\s*(\S+)"
)
# `kubectl ... deploy/servescope-<component>`: a Deployment the chart names, not a folder.
KUBECTL_DEPLOYMENT = re.compile(r"^deploy/servescope-[\w<>-]*$")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")
_PATH = re.compile(
    r"(?<![\w./:$@~-])"  # not the middle of a URL, an absolute path or another word
    r"((?:\./|(?:\.\./)+)?(?:" + "|".join(re.escape(t) for t in TOP_LEVEL) + r")/"
    r"[\w.*<>{},/-]*|(?:" + "|".join(re.escape(f) for f in ROOT_FILES) + r")\b)"
)
# In Markdown, `code` that is a relative file path (a folder and a known extension), such as
# `ci/minimal-values.yaml` in the chart's README.
_CODE_PATH = re.compile(
    r"`((?:\.{1,2}/)*[\w.*<>{}-]+(?:/[\w.*<>{},-]+)+\.(?:ya?ml|md|py|json|txt|tpl|lua|sh|toml|onnx|png))`"
)
_LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# `make <target>` where it is a command, not English ("make sure"): in inline code, in
# parentheses, after `&&`, or (in a Markdown code block) at the start of a line.
_MAKE = re.compile(r"(?:`|\(|&&\s*)make ([a-z][a-z0-9_-]*)")
_MAKE_LINE = re.compile(r"^\s*(?:\$\s+)?make ([a-z][a-z0-9_-]*)")
_TARGET = re.compile(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", re.MULTILINE)


@dataclass(frozen=True)
class Mention:
    file: Path
    line: int
    text: str
    link: bool = False  # a Markdown link: relative to its page only


# --- which text of which file ---------------------------------------------------------------


def _files() -> Iterator[Path]:
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            yield Path(folder) / name


def _python_text(source: str) -> list[tuple[int, str]]:
    """Comments and docstrings, with their line numbers."""
    found: list[tuple[int, str]] = []
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
        tree = ast.parse(source)
    except (SyntaxError, tokenize.TokenError):
        return [(n, line) for n, line in enumerate(source.splitlines(), 1)]
    found += [(t.start[0], t.string) for t in tokens if t.type == tokenize.COMMENT]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        doc = ast.get_docstring(node, clean=False)
        if doc:
            first = node.body[0].lineno
            found += [(first + i, line) for i, line in enumerate(doc.splitlines())]
    return found


def _comments(source: str, marker: str = "#") -> list[tuple[int, str]]:
    """`#` comments of YAML, shell, Dockerfile and Makefile text (a `#` after a space or at
    the start of a line; one inside a quoted value is rare enough here)."""
    found = []
    for number, line in enumerate(source.splitlines(), 1):
        match = re.search(rf"(?:^|\s){re.escape(marker)}(.*)$", line)
        if match:
            found.append((number, match.group(1)))
    return found


def _all_lines(source: str) -> list[tuple[int, str]]:
    return list(enumerate(source.splitlines(), 1))


# Read whole (not only their comments): the chart's values and templates, the contract.
WHOLE = ("deploy/helm/servescope/values.yaml", "services/telemetry/src/servescope/telemetry/contract.yaml")  # fmt: skip
WHOLE_UNDER = ("deploy/helm/servescope/templates/",)


def scanned_text(path: Path) -> list[tuple[int, str]] | None:
    """The lines of a file that may hold references, or None when it is not scanned."""
    relative = path.relative_to(ROOT).as_posix()
    name = path.name
    whole = (
        name.endswith(".md")
        or name in {"Dockerfile", "Makefile"}
        or relative in WHOLE
        or relative.startswith(WHOLE_UNDER)
    )
    if whole:
        reader = _all_lines
    elif name.endswith(".py"):
        reader = _python_text
    elif name.endswith((".yaml", ".yml", ".sh")) or relative == ".ci/run":
        reader = _comments
    else:
        return None
    try:
        return reader(path.read_text())
    except UnicodeDecodeError:
        return None


def line_paths(line: str) -> list[str]:
    """The repository paths a line mentions, less URLs and what a command there creates."""
    text = _URL.sub(" ", line)
    created = [
        (m.start(g), m.end(g)) for m in _CREATED.finditer(text) for g in (1, 2, 3) if m.group(g)
    ]
    return [
        match.group(1)
        for match in _PATH.finditer(text)
        if not any(start <= match.start() < end for start, end in created)
    ]


def mentions() -> Iterator[Mention]:
    for path in _files():
        lines = scanned_text(path)
        if lines is None:
            continue
        in_code = False
        for number, line in lines:
            if path.name.endswith(".md") and line.lstrip().startswith("```"):
                in_code = not in_code
            if path.name.endswith(".md") and not in_code:
                for target in _LINK.findall(line):
                    yield Mention(path, number, target, link=True)
                for code in _CODE_PATH.findall(line):
                    if not _PATH.match(code):
                        yield Mention(path, number, code)
            for found in line_paths(line):
                yield Mention(path, number, found)


def make_mentions() -> Iterator[Mention]:
    for path in _files():
        lines = scanned_text(path)
        if lines is None:
            continue
        in_code = False
        for number, line in lines:
            if path.name.endswith(".md") and line.lstrip().startswith("```"):
                in_code = not in_code
            found = _MAKE.findall(line) + (_MAKE_LINE.findall(line) if in_code else [])
            for target in found:
                yield Mention(path, number, target)


# --- resolving -------------------------------------------------------------------------------


def _expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*,[^{}]*)\}", pattern)
    if not match:
        return [pattern]
    return [
        expanded
        for choice in match.group(1).split(",")
        for expanded in _expand_braces(pattern[: match.start()] + choice + pattern[match.end() :])
    ]


def patterns(text: str) -> list[str]:
    """Glob patterns for a mention: trailing punctuation off, placeholders made wildcards."""
    text = text.split("#", 1)[0].split("?", 1)[0]
    text = re.sub(r"\.{3,}$", "", text).rstrip(".,;:")
    if text.endswith("}") and "{" not in text.rsplit("/", 1)[-1]:
        text = text.rstrip("}")
    text = re.sub(r"(?<=/)\.{3}(?=/)", "**", text)
    text = re.sub(r"<[^<>/]*>", "*", text)
    found = []
    for expanded in _expand_braces(text):
        found.append(re.sub(r"\{[^{}/]*\}", "*", expanded))
    return found


def _member(path: Path) -> Path | None:
    for parent in path.parents:
        if parent == ROOT or not parent.is_relative_to(ROOT):
            return None
        if (parent / "pyproject.toml").is_file():
            return parent
    return None


def _exists(base: Path, pattern: str) -> bool:
    pattern = pattern.removeprefix("./")
    if not pattern or pattern == "/":
        return base.is_dir()
    if any(ch in pattern for ch in "*?["):
        directory = pattern.endswith("/")
        glob = pattern.rstrip("/")
        if glob.startswith("../"):
            resolved = base
            while glob.startswith("../"):
                resolved, glob = resolved.parent, glob[3:]
            base = resolved
        return any((not directory or m.is_dir()) for m in base.glob(glob))
    target = base / pattern
    return target.is_dir() if pattern.endswith("/") else target.exists()


def resolves(mention: Mention) -> bool:
    """Every alternative of a `{a,b}` mention exists (a glob: something matches) under one of
    the bases."""
    text = mention.text
    if mention.link:
        if re.match(r"^[a-z][a-z0-9+.-]*:", text) or text.startswith("#"):
            return True  # a URL, a mailto: or an anchor on the same page
        bases = [ROOT] if text.startswith("/") else [mention.file.parent]
        text = text.lstrip("/")
    else:
        member = _member(mention.file)
        bases = [ROOT, mention.file.parent, *([member] if member else [])]
    if RUNTIME_OUTPUT.search(text) or KUBECTL_DEPLOYMENT.match(text) or _learner_made(mention):
        return True
    return all(any(_exists(base, p) for base in bases) for p in patterns(text))


@functools.cache
def _optional_stack_files() -> tuple[str, ...]:
    """The files `servescope stack install` reads only when they exist (deploy/stack/stack.yaml:
    setFiles globs, valuesWhenPresent and yamlFiles paths). A lab may have the learner create
    one, so a lab's pages may name them before they exist."""
    import yaml

    stack = yaml.safe_load((ROOT / "deploy" / "stack" / "stack.yaml").read_text())
    found: list[str] = []
    for release in stack["releases"]:
        found += [entry["glob"] for entry in release.get("setFiles", [])]
        for key in ("valuesWhenPresent", "yamlFiles"):
            found += [entry["path"] for entry in release.get(key, [])]
    return tuple(found)


def _learner_made(mention: Mention) -> bool:
    """In a lab's files: the learner's workspace (`work/...`) or a file the stack reads when
    present, which the lab has the learner create (or its folder)."""
    if not mention.file.is_relative_to(ROOT / "labs"):
        return False
    text = mention.text.rstrip("/")
    if text == "work" or text.startswith("work/"):
        return True
    optional = _optional_stack_files()
    return any(
        fnmatch.fnmatch(text, pattern) or text == pattern.rsplit("/", 1)[0] for pattern in optional
    )


def make_targets() -> set[str]:
    return set(_TARGET.findall((ROOT / "Makefile").read_text()))


def _where(mention: Mention) -> str:
    return f"{mention.file.relative_to(ROOT)}:{mention.line}: {mention.text}"


# --- the tests -------------------------------------------------------------------------------


def test_every_mentioned_path_exists() -> None:
    found = list(mentions())
    assert len(found) > 100, "the scan found almost nothing: is the pattern broken?"
    missing = sorted({_where(m) for m in found if not resolves(m)})
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def test_every_mentioned_make_target_exists() -> None:
    targets = make_targets()
    found = list(make_mentions())
    assert found
    missing = sorted({_where(m) for m in found if m.text not in targets})
    assert not missing, "make targets the Makefile lacks:\n" + "\n".join(missing)


def test_the_scan_reads_what_it_should() -> None:
    """Placeholders, globs, braces and relative paths resolve; a made-up path does not."""
    readme = ROOT / "README.md"
    ok = [
        "services/{preprocess,classifier,postprocess}/Dockerfile",
        "deploy/prometheus/rules/*.yml",
        "runbooks/<alert>.md",
        "services/<service>/src/servescope/<service>/",
        "services/classifier/model/model-card.json,",
        "services/telemetry/.../contract.yaml",
        "docs/telemetry.md#metrics",
    ]
    for text in ok:
        assert resolves(Mention(readme, 1, text)), text
    for text in ["deploy/no-such-thing/", "services/{preprocess,nothing}/Dockerfile"]:
        assert not resolves(Mention(readme, 1, text)), text
    page = ROOT / "docs" / "architecture.md"
    assert resolves(Mention(page, 1, "../README.md", link=True))
    assert not resolves(Mention(page, 1, "README.md", link=True))
    assert resolves(Mention(page, 1, "https://prometheus.io/docs/", link=True))
    # What counts as a path mention, and what does not.
    text = (
        "see `deploy/helm/servescope/values.yaml`, https://example.invalid/services/x "
        "/opt/services/y, ./scripts/pin.py and (make pin), but make sure."
    )
    assert line_paths(text) == ["deploy/helm/servescope/values.yaml", "./scripts/pin.py"]
    assert _MAKE.findall(text) == ["pin"]
    assert _CODE_PATH.findall("`ci/minimal-values.yaml`, `app.kubernetes.io/name`") == [
        "ci/minimal-values.yaml"
    ]
    assert [_MAKE_LINE.findall(line) for line in ["make up     # run", "$ make test"]] == [
        ["up"],
        ["test"],
    ]
    assert not _MAKE.findall("# make them agree")
    # Paths a command creates are not references.
    assert line_paths("mkdir -p deploy/x && cp labs/a deploy/x/y.lua > tests/out.txt") == ["labs/a"]
    assert line_paths("a -> deploy/x, <b> docs/y") == ["deploy/x,", "docs/y"]
    # In a lab, the learner's workspace and the files the stack reads when present.
    lab = ROOT / "labs" / "advanced" / "some-lab" / "README.md"
    for text in ["work/sampling.lua", "deploy/fluent-bit/mine.lua", "deploy/fluent-bit/"]:
        assert resolves(Mention(lab, 1, text)), text
    assert not resolves(Mention(readme, 1, "deploy/fluent-bit/mine.lua"))
    # Run-time outputs and kubectl's Deployment names are not repository paths.
    for text in [".run/logs/preprocess.log", "labs/<id>/work/", "deploy/servescope-<service>"]:
        assert resolves(Mention(readme, 1, text)), text
