"""The virtual phone's shell: a small interpreter, in Python, of what a phone's shell is asked for sysfs.

Why not run ``/bin/sh``: anyone who can reach the virtual phone's port would then run any program
as the user serving it. This interpreter knows only the commands our Android backend sends and
that people type in ``adb shell`` to look at cpufreq/devfreq (``cat``, ``echo V > FILE``, ``ls``,
``getprop``, ``id``, ``getenforce``, ``test``/``[``, ``su -c`` of those), plus the shell grammar
that holds them together (``;``, ``&&``, ``||``, ``|``, ``{ ...; }``, ``( ... )``, function
definitions, ``$(...)``, ``$1``/``$v``/``$?``, quotes, ``>``/``2>&1``/``<`` redirections, globs).
Everything else answers as a phone's mksh does: ``<cmd>: inaccessible or not found`` (status 127);
``if``, loops, here-documents, backquotes and arithmetic are syntax errors.

Files are the virtual board's tree seen as the phone's ``/`` (only ``/sys`` exists there; the
kernel's private ``.virtual`` state is not visible). Paths are resolved like a chroot: ``..`` stops
at ``/``, symlinks are followed inside the tree only (an absolute target is taken from the phone's
``/``), and files are opened component by component with ``O_NOFOLLOW`` so nothing swapped in
after the check can lead out. Writes go through ``VirtualKernel.write``, so the kernel's rules
(tables, min <= max, governors, read-only attributes, injected faults) answer them.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SH = "/system/bin/sh"
VISIBLE_TOP = frozenset({"sys"})  # what the phone's / holds; the rest of the tree is the kernel's own
MAX_OUTPUT = 4 * 1024 * 1024  # bytes one command may print (a phone's attributes are a page at most)
MAX_READ = 1024 * 1024  # bytes `cat` reads from one file
MAX_DEPTH = 48  # nesting of $( ), groups and function calls
MAX_STEPS = 20_000  # simple commands one script may run (no loops, but recursion is bounded too)
MAX_SYMLINKS = 40  # like the kernel's ELOOP limit
PAGE_SIZE = 4096  # sysfs takes at most a page per write(2)
META = " \t\n;&|()<>"
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ASSIGN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
REDIR = re.compile(r"(\d?)(>>|>&|<&|>\||<<|>|<)")
OPERATORS = ("&&", "||", ";;", ";", "|", "&", "(", ")", "\n")


class ShellSyntax(Exception):
    """The script is not in the language the virtual phone understands."""


class ShellLimit(Exception):
    """A bound on output, nesting or steps was hit."""


class ExitShell(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class ReturnFn(ExitShell):
    pass


# ---- words and the lexer ---------------------------------------------------------------------
@dataclass
class Part:
    kind: str  # "lit", "var" or "sub"
    value: object  # text, a parameter name, or the parsed command of a $( )
    quoted: bool


@dataclass
class Word:
    parts: list[Part]

    def literal(self) -> str | None:
        """The word's text when it is one unquoted literal (reserved words, names)."""
        if len(self.parts) == 1 and self.parts[0].kind == "lit" and not self.parts[0].quoted:
            return self.parts[0].value
        return None


@dataclass
class Op:
    op: str


@dataclass
class Redir:
    fd: int
    op: str
    target: Word


def _lex(src: str, i: int = 0, in_sub: bool = False, depth: int = 0) -> tuple[list, int]:
    if depth > MAX_DEPTH:
        raise ShellLimit("nested too deeply")
    toks: list = []
    parens = 0
    n = len(src)
    while i < n:
        c = src[i]
        if c in " \t":
            i += 1
        elif c == "\\" and src.startswith("\n", i + 1):
            i += 2
        elif c == "#":
            while i < n and src[i] != "\n":
                i += 1
        elif c == ")" and in_sub and parens == 0:
            return toks, i + 1
        elif m := REDIR.match(src, i):
            op = m.group(2)
            if op == "<<":
                raise ShellSyntax("here-documents are not supported")
            fd = int(m.group(1)) if m.group(1) else (0 if op[0] == "<" else 1)
            i = m.end()
            while i < n and src[i] in " \t":
                i += 1
            if i >= n or src[i] in META:
                raise ShellSyntax(f"missing file name after {op!r}")
            target, i = _lex_word(src, i, depth)
            toks.append(Redir(fd, ">" if op == ">|" else op, target))
        elif op := next((o for o in OPERATORS if src.startswith(o, i)), None):
            if op == ";;":
                raise ShellSyntax("';;' unexpected")
            parens += (op == "(") - (op == ")")
            toks.append(Op(op))
            i += len(op)
        else:
            word, i = _lex_word(src, i, depth)
            toks.append(word)
    if in_sub:
        raise ShellSyntax("missing ')' after '$('")
    return toks, i


def _lex_word(src: str, i: int, depth: int) -> tuple[Word, int]:
    parts: list[Part] = []
    buf: list[str] = []
    buf_quoted = False
    n = len(src)

    def lit(text: str, quoted: bool) -> None:
        nonlocal buf_quoted
        if buf and buf_quoted != quoted:
            flush()
        buf_quoted = quoted
        buf.append(text)

    def flush() -> None:
        if buf:
            parts.append(Part("lit", "".join(buf), buf_quoted))
            buf.clear()

    def dollar(j: int, quoted: bool) -> int:
        """Parse what follows a `$` at src[j]; returns the index after it."""
        if src.startswith("((", j + 1):
            raise ShellSyntax("arithmetic $(( )) is not supported")
        if src.startswith("(", j + 1):
            toks, end = _lex(src, j + 2, in_sub=True, depth=depth + 1)
            flush()
            parts.append(Part("sub", parse_tokens(toks, depth + 1), quoted))
            return end
        if src.startswith("{", j + 1):
            end = src.find("}", j + 2)
            name = src[j + 2:end] if end > 0 else ""
            if not (NAME.fullmatch(name) or name.isdigit() or name in ("?", "#", "@", "*")):
                raise ShellSyntax(f"bad substitution: ${{{name}")
            flush()
            parts.append(Part("var", name, quoted))
            return end + 1
        m = NAME.match(src, j + 1)
        if m:
            flush()
            parts.append(Part("var", m.group(0), quoted))
            return m.end()
        if j + 1 < n and (src[j + 1].isdigit() or src[j + 1] in "?#@*$!-"):
            flush()
            parts.append(Part("var", src[j + 1], quoted))
            return j + 2
        lit("$", quoted)
        return j + 1

    while i < n and src[i] not in META:
        c = src[i]
        if c == "'":
            end = src.find("'", i + 1)
            if end < 0:
                raise ShellSyntax("unterminated quoted string")
            lit(src[i + 1:end], True)
            if end == i + 1:  # '' is an empty, quoted word
                flush()
                parts.append(Part("lit", "", True))
            i = end + 1
        elif c == '"':
            i += 1
            start_parts = len(parts) + bool(buf)
            while True:
                if i >= n:
                    raise ShellSyntax("unterminated quoted string")
                c = src[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and src[i + 1] in '$`"\\\n':
                    if src[i + 1] != "\n":
                        lit(src[i + 1], True)
                    i += 2
                elif c == "$":
                    i = dollar(i, True)
                elif c == "`":
                    raise ShellSyntax("backquotes are not supported; use $( )")
                else:
                    lit(c, True)
                    i += 1
            if len(parts) + bool(buf) == start_parts:  # "" is an empty, quoted word
                flush()
                parts.append(Part("lit", "", True))
        elif c == "\\":
            if i + 1 < n:
                lit(src[i + 1], True)
            i += 2
        elif c == "$":
            i = dollar(i, False)
        elif c == "`":
            raise ShellSyntax("backquotes are not supported; use $( )")
        else:
            lit(c, False)
            i += 1
    flush()
    return Word(parts), i


# ---- the parser ------------------------------------------------------------------------------
@dataclass
class Simple:
    assigns: list[tuple[str, Word]]
    words: list[Word]
    redirs: list[Redir]


@dataclass
class Group:
    body: object
    redirs: list[Redir]
    subshell: bool


@dataclass
class FuncDef:
    name: str
    body: Group


@dataclass
class Pipeline:
    cmds: list
    negate: bool


@dataclass
class AndOr:
    first: Pipeline
    rest: list[tuple[str, Pipeline]]


@dataclass
class Seq:
    items: list[AndOr]


class _Parser:
    def __init__(self, toks: list, depth: int) -> None:
        self.toks, self.i, self.depth = toks, 0, depth

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else None

    def is_op(self, *ops: str) -> bool:
        t = self.peek()
        return isinstance(t, Op) and t.op in ops

    def is_word(self, text: str) -> bool:
        t = self.peek()
        return isinstance(t, Word) and t.literal() == text

    def skip_newlines(self) -> None:
        while self.is_op("\n"):
            self.i += 1

    def parse_list(self, closers: tuple[str, ...] = ()) -> Seq:
        items: list[AndOr] = []
        while True:
            while self.is_op("\n", ";", "&"):
                if not items and not self.is_op("\n"):
                    raise ShellSyntax(f"'{self.peek().op}' unexpected")
                self.i += 1
            t = self.peek()
            if t is None or self.is_op(")") or (isinstance(t, Word) and t.literal() in closers):
                return Seq(items)
            items.append(self.parse_and_or())
            if not self.is_op("\n", ";", "&") and self.peek() is not None and not self.is_op(")") \
                    and not (isinstance(self.peek(), Word) and self.peek().literal() in closers):
                raise ShellSyntax(f"{self._show(self.peek())} unexpected")

    def parse_and_or(self) -> AndOr:
        first, rest = self.parse_pipeline(), []
        while self.is_op("&&", "||"):
            op = self.peek().op
            self.i += 1
            self.skip_newlines()
            rest.append((op, self.parse_pipeline()))
        return AndOr(first, rest)

    def parse_pipeline(self) -> Pipeline:
        negate = False
        if self.is_word("!"):
            negate = True
            self.i += 1
        cmds = [self.parse_command()]
        while self.is_op("|"):
            self.i += 1
            self.skip_newlines()
            cmds.append(self.parse_command())
        return Pipeline(cmds, negate)

    def parse_command(self):
        t = self.peek()
        if t is None or (isinstance(t, Op) and t.op != "("):
            raise ShellSyntax(f"{self._show(t)} unexpected")
        if self.is_op("("):
            return self.parse_group(subshell=True)
        if self.is_word("{"):
            return self.parse_group(subshell=False)
        if isinstance(t, Word) and t.literal() in ("}", "if", "then", "else", "elif", "fi", "for", "while",
                                                      "until", "do", "done", "case", "esac", "select"):
            raise ShellSyntax(f"'{t.literal()}' is not supported")
        nxt = self.toks[self.i + 1] if self.i + 1 < len(self.toks) else None
        if isinstance(t, Word) and isinstance(nxt, Op) and nxt.op == "(":
            name = t.literal()
            after = self.toks[self.i + 2] if self.i + 2 < len(self.toks) else None
            if name is None or not NAME.fullmatch(name) or not (isinstance(after, Op) and after.op == ")"):
                raise ShellSyntax("'(' unexpected")
            self.i += 3
            self.skip_newlines()
            if not (self.is_word("{") or self.is_op("(")):
                raise ShellSyntax(f"function {name} needs a {{ }} body")
            return FuncDef(name, self.parse_group(subshell=self.is_op("(")))
        return self.parse_simple()

    def parse_group(self, subshell: bool) -> Group:
        if self.depth > MAX_DEPTH:
            raise ShellLimit("nested too deeply")
        self.depth += 1
        self.i += 1
        body = self.parse_list(() if subshell else ("}",))
        if subshell and not self.is_op(")"):
            raise ShellSyntax("missing ')'")
        if not subshell and not self.is_word("}"):
            raise ShellSyntax("missing '}'")
        if not body.items:
            raise ShellSyntax("empty { } or ( )")
        self.i += 1
        self.depth -= 1
        redirs = []
        while isinstance(self.peek(), Redir):
            redirs.append(self.peek())
            self.i += 1
        return Group(body, redirs, subshell)

    def parse_simple(self) -> Simple:
        assigns, words, redirs = [], [], []
        while True:
            t = self.peek()
            if isinstance(t, Redir):
                redirs.append(t)
            elif isinstance(t, Word):
                first = t.parts[0] if t.parts else None
                m = ASSIGN.match(first.value) if (first and first.kind == "lit" and not first.quoted) else None
                if not words and m:
                    rest = first.value[m.end():]
                    value = Word(([Part("lit", rest, False)] if rest else []) + t.parts[1:])
                    assigns.append((m.group(1), value))
                else:
                    words.append(t)
            else:
                break
            self.i += 1
        return Simple(assigns, words, redirs)

    @staticmethod
    def _show(t) -> str:
        if t is None:
            return "end of command"
        if isinstance(t, Op):
            return "newline" if t.op == "\n" else f"'{t.op}'"
        return "word"


def parse_tokens(toks: list, depth: int = 0) -> Seq:
    p = _Parser(toks, depth)
    seq = p.parse_list()
    if p.peek() is not None:
        raise ShellSyntax(f"{p._show(p.peek())} unexpected")
    return seq


def parse(script: str) -> Seq:
    toks, _ = _lex(script)
    return parse_tokens(toks)


# ---- the phone's file system -----------------------------------------------------------------
class PhoneFS:
    """The tree under ``root`` as the phone's ``/``: see the module docstring for the rules."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(Path(root))

    def resolve(self, path: str, cwd: str = "/", follow_last: bool = True) -> str:
        """The phone path with no ``.``, ``..`` or symlink left in it; OSError if it does not exist."""
        if not path:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        if "\0" in path:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        todo = deque((path if path.startswith("/") else f"{cwd}/{path}").split("/"))
        stack: list[str] = []
        links = 0
        while todo:
            name = todo.popleft()
            if name in ("", "."):
                continue
            if name == "..":
                if stack:
                    stack.pop()
                continue
            if not stack and name not in VISIBLE_TOP:
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
            real = os.path.join(self.root, *stack, name)
            st = os.lstat(real)
            last = not any(x not in ("", ".") for x in todo)
            if stat.S_ISLNK(st.st_mode) and (follow_last or not last):
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                target = os.readlink(real)
                if target.startswith("/"):
                    stack = []
                todo.extendleft(reversed(target.split("/")))
                continue
            if not last and not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            stack.append(name)
        return "/" + "/".join(stack)

    def _open(self, canon: str, flags: int) -> int:
        """Open a resolved path walking from the root with O_NOFOLLOW at every step."""
        names = [x for x in canon.split("/") if x]
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for k, name in enumerate(names):
                last = k == len(names) - 1
                nfd = os.open(name, (flags if last else os.O_RDONLY | os.O_DIRECTORY) | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def stat(self, canon: str) -> os.stat_result:
        fd = self._open(canon, os.O_PATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def lstat(self, path: str, cwd: str = "/") -> os.stat_result:
        canon = self.resolve(path, cwd, follow_last=False)
        if canon == "/":
            return os.stat(self.root)
        parent, name = canon.rsplit("/", 1)
        fd = self._open(parent or "/", os.O_RDONLY | os.O_DIRECTORY)
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(fd)

    def read(self, canon: str) -> bytes:
        fd = self._open(canon, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EACCES, os.strerror(errno.EACCES))
            chunks, size = [], 0
            while size < MAX_READ:
                chunk = os.read(fd, min(65536, MAX_READ - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def listdir(self, canon: str) -> list[str]:
        fd = self._open(canon, os.O_RDONLY | os.O_DIRECTORY)
        try:
            names = os.listdir(fd)
        finally:
            os.close(fd)
        return sorted(n for n in names if canon != "/" or n in VISIBLE_TOP)

    def readlink(self, canon_parent: str, name: str) -> str:
        fd = self._open(canon_parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return os.readlink(name, dir_fd=fd)
        finally:
            os.close(fd)


# ---- running -----------------------------------------------------------------------------------
class Buf:
    """Collects output, bounded."""

    def __init__(self, cap: int = MAX_OUTPUT) -> None:
        self.data = bytearray()
        self.cap = cap

    def write(self, data: bytes) -> None:
        if len(self.data) + len(data) > self.cap:
            raise ShellLimit(f"more than {self.cap} bytes of output")
        self.data += data


class Null:
    def write(self, data: bytes) -> None:
        pass


class KernelFile:
    """An attribute opened for writing: each write(2) is one store through the virtual kernel."""

    def __init__(self, write: Callable[[str, str], None], path: str) -> None:
        self._write, self.path = write, path

    def write(self, data: bytes) -> None:
        if data:  # like kernfs, a store sees at most one page
            self._write(self.path, data[:PAGE_SIZE].decode(errors="replace"))


@dataclass
class IO:
    fds: dict
    stdin: bytes = b""

    @property
    def out(self):
        return self.fds.get(1, Null())

    @property
    def err(self):
        return self.fds.get(2, Null())


@dataclass
class Phone:
    """What the shell needs to know about the phone; the device changes these between commands."""

    fs: PhoneFS
    kernel_write: Callable[[str, str], None] | None
    kernel_sync: Callable[[], None] | None = None  # lands the kernel's due work before a read
    root: bool = True  # is the shell uid 0
    su: str = "grant"  # "grant", "deny" or "missing"
    selinux: str = "Enforcing"
    eacces: set[str] = field(default_factory=set)  # attributes whose writes are refused
    props: dict[str, str] = field(default_factory=dict)


class Shell:
    """One shell process: its variables, functions, working directory and uid."""

    def __init__(self, phone: Phone, root: bool | None = None) -> None:
        self.phone = phone
        self.root = phone.root if root is None else root
        self.vars: dict[str, str] = {}
        self.funcs: dict[str, Group] = {}
        self.positional: list[str] = []
        self.cwd = "/"
        self.status = 0
        self.depth = 0
        self.steps = [0]  # shared with subshells: one budget per script
        self._sub_status: int | None = None

    def subshell(self) -> Shell:
        s = Shell(self.phone, self.root)
        s.vars, s.funcs, s.positional = dict(self.vars), dict(self.funcs), list(self.positional)
        s.cwd, s.status, s.depth, s.steps = self.cwd, self.status, self.depth, self.steps
        return s

    # ---- entry point --------------------------------------------------------------------
    def run_script(self, script: str, io: IO) -> int:
        """Run a whole script the way ``sh -c SCRIPT`` would; returns its exit status."""
        try:
            tree = parse(script)
        except (ShellSyntax, ShellLimit, RecursionError) as exc:
            io.err.write(f"{SH}: syntax error: {exc or 'nested too deeply'}\n".encode())
            return 2
        try:
            return self.run(tree, io)
        except ExitShell as e:
            return e.status

    # ---- the tree -----------------------------------------------------------------------
    def run(self, node, io: IO) -> int:
        if isinstance(node, Seq):
            status = 0
            for item in node.items:
                status = self.run(item, io)
            return status
        if isinstance(node, AndOr):
            status = self.run(node.first, io)
            for op, pipe in node.rest:
                if (op == "&&") == (status == 0):
                    status = self.run(pipe, io)
            return status
        if isinstance(node, Pipeline):
            status = self._pipeline(node, io)
            self.status = (0 if status else 1) if node.negate else status
            return self.status
        if isinstance(node, FuncDef):
            self.funcs[node.name] = node.body
            self.status = 0
            return 0
        if isinstance(node, Group):
            return self._group(node, io)
        return self._simple(node, io)

    def _pipeline(self, node: Pipeline, io: IO) -> int:
        if len(node.cmds) == 1:
            return self.run(node.cmds[0], io)
        stdin, status = io.stdin, 0
        for k, cmd in enumerate(node.cmds):
            last = k == len(node.cmds) - 1
            buf = None if last else Buf()
            fds = dict(io.fds) if last else {**io.fds, 1: buf}
            try:
                status = self.subshell().run(cmd, IO(fds, stdin))
            except ExitShell as e:
                status = e.status
            if buf is not None:
                stdin = bytes(buf.data)
        return status

    def _group(self, node: Group, io: IO) -> int:
        fds, stdin, status = self._redirect(node.redirs, io)
        if status is not None:
            return status
        self._enter()
        try:
            if node.subshell:
                try:
                    return self.subshell().run(node.body, IO(fds, stdin))
                except ExitShell as e:
                    if isinstance(e, ReturnFn):
                        raise
                    return e.status
            return self.run(node.body, IO(fds, stdin))
        finally:
            self.depth -= 1

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.depth -= 1
            raise ShellLimit("nested too deeply (recursion?)")

    def _simple(self, node: Simple, io: IO) -> int:
        self.steps[0] += 1
        if self.steps[0] > MAX_STEPS:
            raise ShellLimit(f"more than {MAX_STEPS} commands")
        self._sub_status = None
        argv: list[str] = []
        for w in node.words:
            argv.extend(self._expand(w, io))
        values = [(name, "".join(self._expand(w, io, split=False))) for name, w in node.assigns]
        fds, stdin, status = self._redirect(node.redirs, io)
        if status is not None:
            self.status = status
            return status
        for name, value in values:
            self.vars[name] = value
        if not argv:
            self.status = self._sub_status if self._sub_status is not None else 0
            return self.status
        self.status = self.call(argv, IO(fds, stdin))
        return self.status

    def call(self, argv: list[str], io: IO) -> int:
        name = argv[0]
        if name in self.funcs:
            self._enter()
            saved = self.positional
            self.positional = argv[1:]
            try:
                return self.run(self.funcs[name].body, io)
            except ReturnFn as r:
                return r.status
            finally:
                self.positional = saved
                self.depth -= 1
        builtin = BUILTINS.get(name)
        if builtin is None or (name == "su" and self.phone.su == "missing"):
            io.err.write(f"{SH}: {name}: inaccessible or not found\n".encode())
            return 127
        try:
            return builtin(self, argv, io)
        except OSError as exc:  # output refused: a write(2) to an attribute failed
            io.err.write(f"{SH}: {name}: write error: {exc.strerror or os.strerror(exc.errno or errno.EIO)}\n"
                         .encode())
            return 1

    # ---- expansion ------------------------------------------------------------------------
    def _param(self, name: str) -> str:
        if name == "?":
            return str(self.status)
        if name == "#":
            return str(len(self.positional))
        if name in ("@", "*"):
            return " ".join(self.positional)
        if name == "$":
            return "4242"
        if name in ("!", "-"):
            return ""
        if name.isdigit():
            k = int(name)
            return "sh" if k == 0 else (self.positional[k - 1] if k <= len(self.positional) else "")
        return self.vars.get(name, "")

    def _expand(self, word: Word, io: IO, split: bool = True) -> list[str]:
        fields: list[str] = []
        cur: list[str] = []
        keep = False  # the current field exists even if empty (it had quotes)
        for part in word.parts:
            if part.kind == "lit":
                cur.append(part.value)
                keep = True
                continue
            if part.kind == "var":
                text = self._param(part.value)
            else:
                sub = self.subshell()
                buf = Buf()
                self._enter()
                try:
                    status = sub.run(part.value, IO({**io.fds, 1: buf}))
                except ExitShell as e:
                    status = e.status
                finally:
                    self.depth -= 1
                self._sub_status = status
                self.status = status
                text = bytes(buf.data).decode(errors="replace").rstrip("\n")
            if part.quoted or not split:
                cur.append(text)
                keep = True
                continue
            pieces = text.split()
            if not pieces:
                continue
            if text[:1].isspace() and (cur or keep):
                fields.append("".join(cur))
                cur, keep = [], False
            for k, piece in enumerate(pieces):
                if k:
                    fields.append("".join(cur))
                    cur = []
                cur.append(piece)
                keep = True
            if text[-1:].isspace():
                fields.append("".join(cur))
                cur, keep = [], False
        if cur or keep:
            fields.append("".join(cur))
        if not split:
            return ["".join(fields)]
        pattern = self._glob_pattern(word)
        if pattern is not None:
            found = self._glob(pattern)
            if found:
                return found
        return fields

    @staticmethod
    def _glob_pattern(word: Word) -> str | None:
        if not word.parts or any(p.kind != "lit" or p.quoted for p in word.parts):
            return None
        text = "".join(p.value for p in word.parts)
        return text if any(c in text for c in "*?[") else None

    def _glob(self, pattern: str) -> list[str]:
        fs = self.phone.fs
        absolute = pattern.startswith("/")
        results = [""]
        comps = [c for c in pattern.split("/") if c]
        for k, comp in enumerate(comps):
            nxt = []
            for prefix in results:
                base = prefix if (prefix or not absolute) else ""
                shown = f"{base}/{comp}" if (base or absolute) else comp
                if not any(c in comp for c in "*?["):
                    nxt.append(shown)
                    continue
                try:
                    canon = fs.resolve(base or ("/" if absolute else "."), self.cwd)
                    names = fs.listdir(canon)
                except (OSError, ValueError):
                    continue
                for name in names:
                    if name.startswith(".") and not comp.startswith("."):
                        continue
                    if fnmatch.fnmatchcase(name, comp):
                        nxt.append(f"{base}/{name}" if (base or absolute) else name)
            results = nxt
            if k == len(comps) - 1:
                out = []
                for r in results:
                    try:
                        fs.lstat(r, self.cwd)
                        out.append(r)
                    except (OSError, ValueError):
                        pass
                return sorted(out)
        return []

    # ---- redirections -----------------------------------------------------------------------
    def _redirect(self, redirs: list[Redir], io: IO) -> tuple[dict, bytes, int | None]:
        fds, stdin = dict(io.fds), io.stdin
        for r in redirs:
            fields = self._expand(r.target, io)
            if len(fields) != 1:
                io.err.write(f"{SH}: ambiguous redirect\n".encode())
                return fds, stdin, 1
            target = fields[0]
            if r.op in (">&", "<&"):
                if target == "-":
                    fds.pop(r.fd, None)
                elif target.isdigit() and int(target) in fds:
                    fds[r.fd] = fds[int(target)]
                elif target.isdigit():
                    fds.pop(r.fd, None)
                else:
                    io.err.write(f"{SH}: {target}: bad file descriptor\n".encode())
                    return fds, stdin, 1
                continue
            if target == "/dev/null":
                if r.op == "<":
                    stdin = b""
                else:
                    fds[r.fd] = Null()
                continue
            try:
                if r.op == "<":
                    data = self.phone.fs.read(self.phone.fs.resolve(target, self.cwd))
                    if r.fd == 0:
                        stdin = data
                else:
                    fds[r.fd] = self.open_for_write(target)
            except OSError as exc:
                io.err.write(f"{SH}: {target}: {exc.strerror or os.strerror(exc.errno)}\n".encode())
                return fds, stdin, 1
        return fds, stdin, None

    def open_for_write(self, path: str) -> KernelFile:
        """Open a file for writing as the phone would: only existing, writable attributes, by root."""
        fs = self.phone.fs
        try:
            canon = fs.resolve(path, self.cwd)
        except FileNotFoundError:
            parent = (path.rsplit("/", 1)[0] or "/") if "/" in path else "."
            fs.resolve(parent, self.cwd)  # ENOENT when the folder is missing too
            raise OSError(errno.EACCES, os.strerror(errno.EACCES)) from None  # sysfs creates no files
        st = fs.stat(canon)
        if stat.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o200 or not self.root \
                or canon in self.phone.eacces or self.phone.kernel_write is None:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return KernelFile(self.phone.kernel_write, canon)


# ---- the commands ----------------------------------------------------------------------------
def _echo(sh: Shell, argv: list[str], io: IO) -> int:
    args, newline, escapes = argv[1:], True, False
    while args and re.fullmatch(r"-[neE]+", args[0]):
        newline = newline and "n" not in args[0]
        escapes = "e" in args[0] or (escapes and "E" not in args[0])
        args = args[1:]
    text = " ".join(args)
    if escapes:
        cut = text.find("\\c")
        if cut >= 0:
            text, newline = text[:cut], False
        for a, b in (("\\n", "\n"), ("\\t", "\t"), ("\\r", "\r"), ("\\a", "\a"), ("\\b", "\b"), ("\\\\", "\\")):
            text = text.replace(a, b)
    io.out.write((text + ("\n" if newline else "")).encode())
    return 0


def _cat(sh: Shell, argv: list[str], io: IO) -> int:
    files = [a for a in argv[1:] if a != "-u"]
    if not files:
        files = ["-"]
    status = 0
    for f in files:
        if f == "-":
            io.out.write(io.stdin)
            continue
        if f.startswith("-"):
            io.err.write(f"cat: Unknown option '{f.lstrip('-')[:1]}'\n".encode())
            return 1
        try:
            canon = sh.phone.fs.resolve(f, sh.cwd)
            if not sh.root and not sh.phone.fs.lstat(canon).st_mode & 0o004:  # e.g. cpuinfo_cur_freq
                raise OSError(errno.EACCES, os.strerror(errno.EACCES))
            if sh.phone.kernel_sync is not None:
                sh.phone.kernel_sync()
            data = sh.phone.fs.read(canon)
        except OSError as exc:
            io.err.write(f"cat: {f}: {exc.strerror or os.strerror(exc.errno)}\n".encode())
            status = 1
            continue
        io.out.write(data)
    return status


def _mode_string(mode: int) -> str:
    kind = "d" if stat.S_ISDIR(mode) else "l" if stat.S_ISLNK(mode) else "-"
    bits = "".join(ch if mode & (0o400 >> k) else "-" for k, ch in enumerate("rwxrwxrwx"))
    return kind + bits


def _ls(sh: Shell, argv: list[str], io: IO) -> int:
    flags, operands = set(), []
    for a in argv[1:]:
        if a.startswith("-") and len(a) > 1:
            for ch in a[1:]:
                if ch not in "1aAldF":
                    io.err.write(f"ls: Unknown option '{ch}'\n".encode())
                    return 1
                flags.add(ch)
        else:
            operands.append(a)
    fs, status = sh.phone.fs, 0
    operands = operands or ["."]

    def line(parent: str, name: str, shown: str) -> str:
        if "l" not in flags:
            return shown + ("/" if "F" in flags and _isdir(fs, parent, name) else "")
        st = fs.lstat(f"{parent.rstrip('/')}/{name}" if name else parent)
        tail = ""
        if stat.S_ISLNK(st.st_mode):
            tail = " -> " + fs.readlink(parent, name)
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(st.st_mtime))
        return f"{_mode_string(st.st_mode)} 1 root root {st.st_size:>5} {when} {shown}{tail}"

    for k, op in enumerate(operands):
        try:
            canon = fs.resolve(op, sh.cwd)
            st = fs.stat(canon)
        except OSError as exc:
            io.err.write(f"ls: {op}: {exc.strerror or os.strerror(exc.errno)}\n".encode())
            status = 1
            continue
        if not stat.S_ISDIR(st.st_mode) or "d" in flags:
            parent, _, name = canon.rpartition("/")
            io.out.write((line(parent or "/", name, op) + "\n").encode())
            continue
        if len(operands) > 1:
            io.out.write(f"{'' if k == 0 else chr(10)}{op}:\n".encode())
        names = fs.listdir(canon)
        if "a" not in flags and "A" not in flags:
            names = [n for n in names if not n.startswith(".")]
        if "a" in flags:
            names = [".", "..", *names]
        for name in names:
            io.out.write((line(canon, name if name not in (".", "..") else "", name) + "\n").encode())
    return status


def _isdir(fs: PhoneFS, parent: str, name: str) -> bool:
    try:
        return stat.S_ISDIR(fs.stat(fs.resolve(f"{parent.rstrip('/')}/{name}")).st_mode)
    except OSError:
        return False


def _getprop(sh: Shell, argv: list[str], io: IO) -> int:
    props = sh.phone.props
    if len(argv) == 1:
        for k in sorted(props):
            io.out.write(f"[{k}]: [{props[k]}]\n".encode())
        return 0
    default = argv[2] if len(argv) > 2 else ""
    io.out.write((props.get(argv[1], default) + "\n").encode())
    return 0


def _id(sh: Shell, argv: list[str], io: IO) -> int:
    uid, name = (0, "root") if sh.root else (2000, "shell")
    opts = "".join(a.lstrip("-") for a in argv[1:] if a.startswith("-"))
    if any(c not in "ugnGr" for c in opts) or any(not a.startswith("-") for a in argv[1:]):
        io.err.write(b"id: only -u, -g, -G and -n are supported\n")
        return 1
    if "u" in opts or "g" in opts or "G" in opts:
        io.out.write(f"{name if 'n' in opts else uid}\n".encode())
        return 0
    context = "u:r:su:s0" if sh.root else "u:r:shell:s0"
    io.out.write(f"uid={uid}({name}) gid={uid}({name}) groups={uid}({name}) context={context}\n".encode())
    return 0


def _getenforce(sh: Shell, argv: list[str], io: IO) -> int:
    io.out.write(f"{sh.phone.selinux}\n".encode())
    return 0


def _su(sh: Shell, argv: list[str], io: IO) -> int:
    """Magisk-style ``su [-] [-l] [-m] [root|0] [-c COMMAND] [ARGS...]``; without a command, the script on stdin."""
    if sh.phone.su == "deny":
        io.err.write(b"Permission denied\n")
        return 1
    args, command = argv[1:], None
    rest: list[str] = []
    while args:
        a = args.pop(0)
        if rest:  # the command and its own arguments
            rest.append(a)
        elif a in ("-c", "--command"):
            if not args:
                io.err.write(b"su: option requires an argument -- c\n")
                return 2
            command = args.pop(0)
        elif a in ("-", "-l", "--login", "-m", "-p", "-mm", "--preserve-environment"):
            continue
        elif a in ("0", "root") and command is None:
            continue
        elif a.startswith("-"):
            io.err.write(f"su: unsupported option {a}\n".encode())
            return 2
        else:
            rest.append(a)
    child = Shell(sh.phone, root=True)
    child.steps, child.depth = sh.steps, sh.depth
    if command is not None:
        return child.run_script(command, io)
    if rest:
        try:
            return child.call(rest, io)
        except ExitShell as e:
            return e.status
    return child.run_script(io.stdin.decode(errors="replace"), IO(io.fds, b""))


def _test(sh: Shell, argv: list[str], io: IO) -> int:
    args = argv[1:]
    if argv[0] == "[":
        if not args or args[-1] != "]":
            io.err.write(b"[: missing ]\n")
            return 2
        args = args[:-1]
    negate = False
    if len(args) >= 2 and args[0] == "!":
        negate, args = True, args[1:]
    try:
        result = _test_expr(sh, args)
    except ValueError as exc:
        io.err.write(f"{argv[0]}: {exc}\n".encode())
        return 2
    return 0 if result != negate else 1


def _test_expr(sh: Shell, args: list[str]) -> bool:
    if not args:
        return False
    if len(args) == 1:
        return args[0] != ""
    if len(args) == 2:
        op, arg = args
        if op == "-n":
            return arg != ""
        if op == "-z":
            return arg == ""
        if op in ("-L", "-h"):
            try:
                return stat.S_ISLNK(sh.phone.fs.lstat(arg, sh.cwd).st_mode)
            except OSError:
                return False
        if op in ("-e", "-f", "-d", "-r", "-w", "-x", "-s"):
            try:
                st = sh.phone.fs.stat(sh.phone.fs.resolve(arg, sh.cwd))
            except OSError:
                return False
            return {"-e": True, "-f": stat.S_ISREG(st.st_mode), "-d": stat.S_ISDIR(st.st_mode),
                    "-r": bool(st.st_mode & 0o444), "-w": bool(st.st_mode & 0o222) and sh.root,
                    "-x": bool(st.st_mode & 0o111), "-s": st.st_size > 0}[op]
        raise ValueError(f"unknown operator {op}")
    if len(args) == 3:
        a, op, b = args
        if op == "=":
            return a == b
        if op == "!=":
            return a != b
        ints = {"-eq": int.__eq__, "-ne": int.__ne__, "-lt": int.__lt__, "-le": int.__le__,
                "-gt": int.__gt__, "-ge": int.__ge__}
        if op in ints:
            try:
                return ints[op](int(a), int(b))
            except ValueError:
                raise ValueError("integer expected") from None
        raise ValueError(f"unknown operator {op}")
    raise ValueError("too many arguments")


def _exit(sh: Shell, argv: list[str], io: IO) -> int:
    raise ExitShell(_status_arg(argv, sh.status))


def _return(sh: Shell, argv: list[str], io: IO) -> int:
    raise ReturnFn(_status_arg(argv, sh.status))


def _status_arg(argv: list[str], default: int) -> int:
    if len(argv) > 1 and argv[1].isdigit():
        return int(argv[1]) & 0xFF
    return default


def _cd(sh: Shell, argv: list[str], io: IO) -> int:
    target = argv[1] if len(argv) > 1 else "/"
    try:
        canon = sh.phone.fs.resolve(target, sh.cwd)
        if not stat.S_ISDIR(sh.phone.fs.stat(canon).st_mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
    except OSError as exc:
        io.err.write(f"{SH}: cd: {target}: {exc.strerror or os.strerror(exc.errno)}\n".encode())
        return 1
    sh.cwd = canon
    return 0


BUILTINS: dict[str, Callable[[Shell, list[str], IO], int]] = {
    "echo": _echo, "cat": _cat, "ls": _ls, "getprop": _getprop, "id": _id, "getenforce": _getenforce,
    "su": _su, "test": _test, "[": _test, "exit": _exit, "return": _return, "cd": _cd,
    "pwd": lambda sh, argv, io: io.out.write(f"{sh.cwd}\n".encode()) or 0,
    "true": lambda sh, argv, io: 0, ":": lambda sh, argv, io: 0, "false": lambda sh, argv, io: 1,
}


def run_command(phone: Phone, command: str) -> tuple[bytes, int]:
    """Run one ``shell:`` command; stdout and stderr are merged, as ADB's shell protocol v1 does."""
    out = Buf()
    shell = Shell(phone)
    try:
        status = shell.run_script(command, IO({1: out, 2: out}))
    except ShellLimit as exc:
        out.cap += 4096
        out.write(f"{SH}: {exc}\n".encode())
        status = 2
    except RecursionError:
        out.cap += 4096
        out.write(f"{SH}: nested too deeply\n".encode())
        status = 2
    return bytes(out.data), status
