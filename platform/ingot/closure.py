"""The import closure of an image: which modules and files it must hold.

Found statically, by reading the source of every module reached from the
roots (the runtime, the appliance, the chosen backends) and following every
``import`` and ``from ... import`` statement, also those inside functions
and ``try`` blocks, but not those under ``if TYPE_CHECKING:``. A module that
is not installed is recorded as *missing* (optional imports are common) and
skipped. ``__import__``/``importlib`` calls by computed name cannot be seen:
a plugin lists such modules in its ``DeviceSpec.modules``.

The standard library is recorded but not entered on the ``unix`` target
(the host Python provides it); the ``vm`` target asks for it too.

A top-level distribution package that holds native code (``.so``) is taken
whole, because an extension module cannot be imported from inside a zip:
the image stores it apart and the bootstrap unpacks it once into a cache.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

_EXT = tuple(importlib.machinery.EXTENSION_SUFFIXES)
_SKIP_DIRS = {"__pycache__", "tests", "test"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".pyi")
_SOURCE_SUFFIXES = (".pyx", ".pxd", ".pxi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs")
"""Sources of native code shipped in some wheels; an image runs the compiled form."""


@dataclass
class Module:
    """One module of the closure."""

    name: str
    kind: str        # "source", "package", "extension", "namespace"
    origin: str | None
    path: str | None  # path inside the image ("a/b.py", "a/__init__.py", "a/x.so")


@dataclass
class Closure:
    """What the roots need: modules to ship, standard-library and missing names."""

    modules: dict[str, Module] = field(default_factory=dict)
    stdlib: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    native: set[str] = field(default_factory=set)  # top-level packages with native code
    data: dict[str, str] = field(default_factory=dict)  # image path -> host file

    def files(self) -> dict[str, str]:
        """Image path -> host file of every module and data file."""
        out = {m.path: m.origin for m in self.modules.values() if m.path and m.origin}
        out.update(self.data)
        return out


STDLIB_NEVER = frozenset({
    "tkinter", "_tkinter", "idlelib", "turtle", "turtledemo", "test", "unittest", "doctest",
    "pdb", "pydoc", "pydoc_data", "lib2to3", "ensurepip", "venv", "distutils", "curses",
    "_curses", "readline", "rlcompleter", "sqlite3", "_sqlite3", "tracemalloc", "cProfile",
    "profile", "pstats", "timeit", "trace", "code", "codeop", "xmlrpc", "webbrowser",
    "http.server", "msilib", "winreg", "_winapi", "nt", "_msi", "mailbox",
})
"""Standard-library modules an image that holds the standard library (the VM
targets) never takes: development and desktop tools, reachable only through
imports inside functions of modules an appliance uses."""


STDLIB_OPTIONAL = frozenset({"ssl", "_ssl", "_hashlib", "lzma", "_lzma", "bz2", "_bz2"})
"""Standard-library modules that other standard-library modules import only
if present (``try: import ssl``) and that bring large shared libraries
(OpenSSL's 5 MB, liblzma, libbz2): taken when the appliance's own code or a
plugin imports them, not because asyncio, hashlib or shutil would like to.
hashlib then uses its built-in hashes."""

STDLIB_ALSO: dict[str, tuple[str, ...]] = {
    "hashlib": ("_md5", "_sha1", "_sha256", "_sha512", "_sha3", "_blake2"),
    "socket": ("encodings.idna",),
    "concurrent.futures": ("concurrent.futures.thread",),
}
"""What standard-library modules load without an import statement that the
closure could read: hashlib's built-in hashes (imported inside a function
when OpenSSL lacks one), the codec by which ``socket.getaddrinfo`` encodes
host names (looked up by name in C), the thread pool that
``concurrent.futures`` gives through a module ``__getattr__`` (asyncio's
default executor, used by uvloop at import)."""


def is_stdlib(name: str) -> bool:
    return name.split(".")[0] in sys.stdlib_module_names


def _find(name: str) -> importlib.machinery.ModuleSpec | None:
    try:
        return importlib.util.find_spec(name)
    except ValueError:
        # already imported with no __spec__ (cryptography swaps some modules for a
        # deprecation proxy): look the module up on its parent package's path instead
        parent = name.rpartition(".")[0]
        try:
            path = getattr(importlib.import_module(parent), "__path__", None) if parent else None
            return importlib.machinery.PathFinder.find_spec(name, path)
        except Exception:  # noqa: BLE001 - as unfindable
            return None
    except (ImportError, AttributeError, TypeError, SyntaxError):
        return None
    except Exception:  # noqa: BLE001 - a package __init__ failing while probing
        return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(source: str, module: str, is_package: bool, *,
               top_level_only: bool = False) -> tuple[set[str], set[str]]:
    """Names a module imports: (certain modules, candidates that may be attributes).

    ``top_level_only`` leaves out imports inside function bodies (those run
    only when the function is called).
    """
    tree = ast.parse(source)
    sure: set[str] = set()
    maybe: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if top_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                     ast.Lambda)):
                continue
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    walk_stmt(sub)
                continue
            walk_stmt(child)

    def walk_stmt(child: ast.AST) -> None:
        if isinstance(child, ast.Import):
            for alias in child.names:
                sure.add(alias.name)
        elif isinstance(child, ast.ImportFrom):
            if child.level:
                base = package.split(".")
                if child.level > 1:
                    base = base[: len(base) - (child.level - 1)]
                prefix = ".".join(base)
                full = f"{prefix}.{child.module}" if child.module else prefix
            else:
                full = child.module or ""
            if full:
                sure.add(full)
                for alias in child.names:
                    if alias.name != "*":
                        maybe.add(f"{full}.{alias.name}")
        walk(child)

    walk(tree)
    return sure, maybe


def _image_path(name: str, origin: str, kind: str) -> str:
    parts = name.split(".")
    if kind == "package":
        return "/".join(parts) + "/__init__.py"
    if kind == "extension":
        return "/".join(parts[:-1] + [os.path.basename(origin)])
    return "/".join(parts) + ".py"


def _walk_package_files(top_dir: str) -> Iterable[str]:
    for base, dirs, files in os.walk(top_dir):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for fname in sorted(files):
            if fname.endswith(_SKIP_SUFFIXES + _SOURCE_SUFFIXES) or fname.startswith("."):
                continue
            yield os.path.join(base, fname)


def compute(roots: Iterable[str], *, include_stdlib: bool = False,
            exclude: Iterable[str] = (),
            progress: Callable[[str], None] | None = None) -> Closure:
    """The closure of ``roots`` (module names). Roots must be importable.

    ``exclude`` names top-level packages left out (recorded as missing): for
    packages the code imports only if present.
    """
    excluded = set(exclude)
    result = Closure()
    queue: list[tuple[str, bool]] = [(r, True) for r in roots]
    seen: set[str] = set()
    while queue:
        name, required = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        if name.split(".")[0] in excluded:
            result.missing.add(name)
            continue
        if is_stdlib(name) and (not include_stdlib or name in STDLIB_NEVER
                                or name.split(".")[0] in STDLIB_NEVER):
            result.stdlib.add(name.split(".")[0])
            continue
        # parents first: importing a.b.c runs a/__init__ and a/b/__init__
        parts = name.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent not in seen:
                queue.append((parent, required))
        spec = _find(name)
        if spec is None:
            if required:
                result.missing.add(name)
            continue
        origin = spec.origin
        if origin in (None, "built-in", "frozen") or not origin or not os.path.isfile(origin):
            if spec.submodule_search_locations is not None and origin in (None, "namespace"):
                result.modules[name] = Module(name, "namespace", None, None)
            continue
        if origin.endswith(_EXT):
            kind = "extension"
        elif spec.submodule_search_locations is not None:
            kind = "package"
        elif origin.endswith(".py"):
            kind = "source"
        else:  # sourceless .pyc etc.: cannot be inspected, ship as is
            kind = "source"
        mod = Module(name, kind, origin, _image_path(name, origin, kind))
        result.modules[name] = mod
        queue.extend((m, True) for m in STDLIB_ALSO.get(name, ()))
        if kind == "extension":
            top = parts[0]
            if top not in result.native and not name.startswith("ingot"):
                result.native.add(top)
                # take the whole top-level package: enqueue every module in it
                top_spec = _find(top)
                if top_spec and top_spec.submodule_search_locations:
                    for loc in top_spec.submodule_search_locations:
                        for path in _walk_package_files(loc):
                            rel = os.path.relpath(path, os.path.dirname(loc))
                            if path.endswith(".py"):
                                modname = rel[:-3].replace(os.sep, ".")
                                if modname.endswith(".__init__"):
                                    modname = modname[: -len(".__init__")]
                                queue.append((modname, False))
                            elif not path.endswith(_EXT):
                                result.data[rel.replace(os.sep, "/")] = path
            continue
        if progress:
            progress(name)
        if origin.endswith(".py"):
            try:
                with open(origin, "rb") as fh:
                    source = fh.read()
                sure, maybe = imports_of(source.decode("utf-8", "surrogateescape"), name,
                                         kind == "package", top_level_only=is_stdlib(name))
            except (SyntaxError, ValueError, OSError):
                sure, maybe = set(), set()
            if is_stdlib(name) and parts[0] not in STDLIB_OPTIONAL:
                sure = {m for m in sure if m.split(".")[0] not in STDLIB_OPTIONAL}
                maybe = {m for m in maybe if m.split(".")[0] not in STDLIB_OPTIONAL}
            queue.extend((m, True) for m in sorted(sure, reverse=True))
            queue.extend((m, False) for m in sorted(maybe, reverse=True))
        if kind == "package" and not name.startswith("ingot"):
            pkg_dir = os.path.dirname(origin)
            for fname in sorted(os.listdir(pkg_dir)):
                full = os.path.join(pkg_dir, fname)
                if (os.path.isfile(full) and not fname.startswith(".")
                        and not fname.endswith((".py",) + _SKIP_SUFFIXES + _SOURCE_SUFFIXES
                                               + _EXT)):
                    result.data["/".join(parts) + "/" + fname] = full
    # a missing name whose parent is a plain module was "from mod import attr"
    result.missing = {m for m in result.missing if m not in result.modules}
    return result

