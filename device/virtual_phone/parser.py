"""The virtual phone shell's parser: words, operators and and-or lists (no execution).

Grammar: lists separated by newline, ``;``, ``&&``, ``||`` and ``&`` (background); pipelines with ``|``;
redirections ``> >> < 2> 2>> 2>&1 >&2``; single/double quotes and backslashes; ``$?``, ``$VAR``,
``${VAR}``.  :func:`parse` turns text into :class:`AndOr` lists that :mod:`.shell` runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

OPERATORS = ("&&", "||", ";;", ";", "&", "|", "\n")


class ShellSyntaxError(Exception):
    """Unparsable command text (``sh: syntax error: ...``)."""

# ---------------------------------------------------------------- tokens and words


@dataclass
class Word:
    """A word as a list of segments: ``("lit", text, quoted)`` or ``("var", name, quoted)``."""

    parts: list[tuple[str, str, bool]] = field(default_factory=list)

    def add(self, kind: str, text: str, quoted: bool) -> None:
        self.parts.append((kind, text, quoted))

    @property
    def literal(self) -> str | None:
        """The text when the word has no expansions and no quotes (used for operator-like words)."""
        if all(k == "lit" and not q for k, _, q in self.parts):
            return "".join(t for _, t, _ in self.parts)
        return None


@dataclass
class Redirect:
    fd: int
    mode: str  # ">", ">>", "<", ">&"
    target: Word | int


@dataclass
class Simple:
    words: list[Word] = field(default_factory=list)
    redirects: list[Redirect] = field(default_factory=list)


@dataclass
class AndOr:
    """Pipelines joined by ``&&``/``||``; ``background`` when it ended with ``&``."""

    pipelines: list[list[Simple]]
    connectors: list[str]
    background: bool = False


_VAR_RE = re.compile(r"\?|[A-Za-z_][A-Za-z0-9_]*|[0-9#$!]")


def tokenize(text: str) -> list[Word | str]:
    """Words (as :class:`Word`) and operator strings (``;``, ``&&``, ``|``, ``>``, ``2>&1`` ...)."""
    out: list[Word | str] = []
    i, n = 0, len(text)
    word: Word | None = None

    def flush():
        nonlocal word
        if word is not None:
            out.append(word)
            word = None

    def var_at(j: int, quoted: bool) -> int:
        nonlocal word
        if word is None:
            word = Word()
        if j + 1 < n and text[j + 1] == "{":
            end = text.find("}", j + 2)
            if end < 0:
                raise ShellSyntaxError("bad substitution")
            word.add("var", text[j + 2:end], quoted)
            return end + 1
        m = _VAR_RE.match(text, j + 1)
        if not m:
            word.add("lit", "$", quoted)
            return j + 1
        word.add("var", m.group(0), quoted)
        return m.end()

    while i < n:
        c = text[i]
        if c in " \t":
            flush()
            i += 1
        elif c == "#" and word is None:
            while i < n and text[i] != "\n":
                i += 1
        elif c == "\\":
            if i + 1 < n and text[i + 1] == "\n":
                i += 2
                continue
            word = word or Word()
            word.add("lit", text[i + 1:i + 2], True)
            i += 2
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ShellSyntaxError("unterminated quoted string")
            word = word or Word()
            word.add("lit", text[i + 1:end], True)
            i = end + 1
        elif c == '"':
            word = word or Word()
            word.add("lit", "", True)
            i += 1
            buf = []
            while True:
                if i >= n:
                    raise ShellSyntaxError("unterminated quoted string")
                ch = text[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\" and i + 1 < n and text[i + 1] in '"\\$`\n':
                    buf.append(text[i + 1])
                    i += 2
                elif ch == "$":
                    word.add("lit", "".join(buf), True)
                    buf = []
                    i = var_at(i, True)
                else:
                    buf.append(ch)
                    i += 1
            word.add("lit", "".join(buf), True)
        elif c == "$":
            i = var_at(i, False)
        elif c in ";&|\n<>":
            # a lone digit word just before > or < is a file descriptor
            fd_prefix = ""
            if c in "<>" and word is not None and word.literal is not None and word.literal.isdigit():
                fd_prefix = word.literal
                word = None
            flush()
            for op in (">>", ">&", "&&", "||", ";;", ">", "<", ";", "&", "|", "\n"):
                if text.startswith(op, i):
                    i += len(op)
                    if op == ">&":
                        m = re.match(r"\s*([0-9])", text[i:])
                        if not m:
                            raise ShellSyntaxError("bad fd number")
                        i += m.end()
                        out.append(f"{fd_prefix or '1'}>&{m.group(1)}")
                    elif op in (">", ">>", "<"):
                        out.append(f"{fd_prefix}{op}")
                    else:
                        out.append(op)
                    break
        else:
            word = word or Word()
            j = i
            while j < n and text[j] not in " \t\\'\"$;&|\n<>":
                j += 1
            word.add("lit", text[i:j], False)
            i = j
    flush()
    return out


def parse(text: str) -> list[AndOr]:
    """Parse shell text into and-or lists."""
    tokens = tokenize(text)
    lists: list[AndOr] = []
    pipelines: list[list[Simple]] = []
    connectors: list[str] = []
    pipeline: list[Simple] = []
    cmd = Simple()
    i = 0

    def end_cmd():
        nonlocal cmd
        if not cmd.words and not cmd.redirects:
            raise ShellSyntaxError("unexpected operator")
        pipeline.append(cmd)
        cmd = Simple()

    def end_list(background: bool):
        nonlocal pipelines, connectors, pipeline
        if cmd.words or cmd.redirects:
            end_cmd()
        if pipeline:
            pipelines.append(pipeline)
        elif connectors or background:
            raise ShellSyntaxError(f"unexpected '{'&' if background else connectors[-1]}'")
        if pipelines:
            lists.append(AndOr(pipelines, connectors, background))
        pipelines, connectors, pipeline = [], [], []

    while i < len(tokens):
        t = tokens[i]
        if isinstance(t, Word):
            cmd.words.append(t)
        elif t in (";", "\n", "&"):
            end_list(background=(t == "&"))
        elif t in ("&&", "||"):
            end_cmd()
            pipelines.append(pipeline)
            pipeline = []
            connectors.append(t)
        elif t == "|":
            end_cmd()
        elif t == ";;":
            raise ShellSyntaxError("unexpected ';;'")
        elif ">&" in t:
            fd, target = t.split(">&")
            cmd.redirects.append(Redirect(int(fd), ">&", int(target)))
        else:  # > >> < with optional fd prefix
            m = re.fullmatch(r"([0-9]?)(>>|>|<)", t)
            if not m or i + 1 >= len(tokens) or not isinstance(tokens[i + 1], Word):
                raise ShellSyntaxError(f"unexpected {'newline' if i + 1 >= len(tokens) else tokens[i + 1]!r}")
            fd = int(m.group(1)) if m.group(1) else (0 if m.group(2) == "<" else 1)
            cmd.redirects.append(Redirect(fd, m.group(2), tokens[i + 1]))  # type: ignore[arg-type]
            i += 1
        i += 1
    if connectors and not (cmd.words or cmd.redirects) and not pipeline:
        raise ShellSyntaxError(f"unexpected end of file after '{connectors[-1]}'")
    end_list(background=False)
    return lists

