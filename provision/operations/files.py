"""File operations: file/directory, template, line in file, copy from the controller.

Content changes are written to a temporary file beside the target and renamed over it, so a
crash never leaves a half-written file; line edits keep a backup of the previous version.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import re
import shlex
from pathlib import Path
from typing import Any

import jinja2

from provision.facts.files import PathInfo, PathState
from provision.operations.base import (Change, Command, FactValues, Failure, HostContext,
                                       NoChange, operation)
from provision.settings import Setting
from provision.templating import environment

MODE = Setting("mode", "str", "octal mode such as 0644")
OWNER = Setting("owner", "user")
GROUP = Setting("group", "user")
PATH = Setting("path", "abspath")
DEST = Setting("dest", "abspath")
# The previous version of a file edited line by line (or with backup: true) is kept here.
BACKUP_SUFFIX = ".provision-backup"


def _mode(args: dict[str, Any]) -> str | None:
    mode = args.get("mode")
    if mode is None:
        return None
    text = str(mode).lstrip("0") or "0"
    if not all(c in "01234567" for c in text) or len(text) > 4:
        raise ValueError(f"mode must be octal like 0644, got {mode!r}")
    return text


def _attribute_fixes(path: str, info: PathInfo | None, args: dict[str, Any]) -> list[str]:
    """chmod/chown argv needed so `path` has the wanted mode and owner."""
    # chown before chmod: changing the owner clears the set-user-ID and set-group-ID bits.
    fixes = []
    owner, group = args.get("owner"), args.get("group")
    if (owner and (info is None or info.owner != owner)) or \
            (group and (info is None or info.group != group)):
        spec = (owner or "") + (f":{group}" if group else "")
        fixes.append(shlex.join(["chown", spec, "--", path]))
    mode = _mode(args)
    if mode and (info is None or info.mode != mode):
        fixes.append(shlex.join(["chmod", mode, "--", path]))
    return fixes


def _script(commands: list[str]) -> str:
    """One sh script of several commands that stops at (and exits with) the first failure."""
    return "\n".join(["set -e", *commands]) + "\n"


def write_file_script(path: str, args: dict[str, Any], backup: bool = False) -> str:
    """sh script that atomically replaces `path` with stdin, attributes set before the rename."""
    p = shlex.quote(path)
    lines = ["set -e",
             f"tmp=$(mktemp {shlex.quote(path + '.provision-XXXXXX')})",
             "trap 'rm -f \"$tmp\"' EXIT",
             'cat > "$tmp"']
    if args.get("owner") or args.get("group"):
        spec = (args.get("owner") or "") + (f":{args['group']}" if args.get("group") else "")
        lines.append(f'chown {shlex.quote(spec)} "$tmp"')
    else:
        lines.append(f'if [ -e {p} ]; then chown --reference={p} "$tmp"; fi')
    lines.append(f'chmod {_mode(args) or "644"} "$tmp"')  # after chown, which clears setuid
    if backup:
        lines.append(f"if [ -e {p} ]; then cp -p {p} {shlex.quote(path + BACKUP_SUFFIX)}; fi")
    lines += [f'mv -f "$tmp" {p}', "trap - EXIT"]
    return "\n".join(lines) + "\n"


def _content_change(path: str, info: PathInfo | None, content: bytes, args: dict[str, Any],
                    what: str, backup: bool = False,
                    text: bool = True) -> Change | NoChange | Failure:
    if info is not None and info.kind != "file":
        return Failure(f"{path} is a {info.kind}, not a file")
    if info is not None and info.sha256 == hashlib.sha256(content).hexdigest():
        fixes = _attribute_fixes(path, info, args)
        if not fixes:
            return NoChange(f"{path} is up to date")
        return Change(f"set mode/owner of {path}", (Command(_script(fixes)),))
    old = (info.content or b"") if info else b""
    diff = "".join(difflib.unified_diff(
        old.decode(errors="replace").splitlines(keepends=True),
        content.decode(errors="replace").splitlines(keepends=True),
        fromfile=f"{path} (current)", tofile=f"{path} (wanted)")) if text else None
    verb = "create" if info is None else "update"
    return Change(f"{verb} {path} ({what})",
                  (Command(write_file_script(path, args, backup), stdin=content),), diff or None)


@operation("file", [PATH, MODE, OWNER, GROUP,
                    Setting("state", "str", choices=("file", "directory", "absent")),
                    Setting("content", "str")],
           required=("path",), facts=lambda a: [PathState(a["path"], "content" in a)])
def file_op(args: dict, facts: FactValues, ctx: HostContext):
    """A directory, a file (optionally with content) or nothing at `path`, with mode and owner."""
    path = args["path"]
    state = args.get("state", "file")
    info = facts[PathState(path, "content" in args)]
    if state == "absent":
        if info is None:
            return NoChange(f"{path} is absent")
        return Change(f"remove {path}", (Command(["rm", "-rf", "--", path]),))
    if state == "directory":
        if info is not None and info.kind != "directory":
            return Failure(f"{path} exists and is a {info.kind}, not a directory")
        commands = [] if info else [shlex.join(["mkdir", "-p", "--", path])]
        commands += _attribute_fixes(path, info, args)
        if not commands:
            return NoChange(f"directory {path} exists")
        return Change(("create" if info is None else "fix") + f" directory {path}",
                      (Command(_script(commands)),))
    if "content" in args:
        return _content_change(path, info, args["content"].encode(), args, "content")
    if info is None:
        return Change(f"create empty {path}", (Command(write_file_script(path, args), b""),))
    if info.kind != "file":
        return Failure(f"{path} is a {info.kind}, not a file")
    fixes = _attribute_fixes(path, info, args)
    if not fixes:
        return NoChange(f"{path} exists")
    return Change(f"set mode/owner of {path}", (Command(_script(fixes)),))


def render_template(role_dir: Path, src: str, variables: dict[str, Any]) -> str:
    return _templates(role_dir).get_template(src).render(**variables)


@functools.lru_cache(maxsize=None)
def _templates(role_dir: Path) -> jinja2.Environment:
    """One environment per role: it compiles each template once, not once per host."""
    return environment(loader=jinja2.FileSystemLoader(str(role_dir / "templates")),
                       keep_trailing_newline=True)


@operation("template", [Setting("src", "path"), DEST, MODE, OWNER, GROUP,
                        Setting("backup", "bool")],
           required=("src", "dest"), facts=lambda a: [PathState(a["dest"], True)])
def template_op(args: dict, facts: FactValues, ctx: HostContext):
    """`dest` holds the role template `src` rendered with the host's variables."""
    try:
        content = render_template(ctx.role_dir, args["src"], dict(ctx.variables)).encode()
    except jinja2.TemplateError as exc:
        return Failure(f"template {args['src']}: {exc}")
    return _content_change(args["dest"], facts[PathState(args["dest"], True)], content, args,
                           f"from template {args['src']}", args.get("backup", False))


@operation("line_in_file", [PATH, Setting("line", "str"), Setting("regexp", "str"),
                            Setting("state", "str", choices=("present", "absent")), MODE],
           required=("path", "line"), facts=lambda a: [PathState(a["path"], True)])
def line_in_file_op(args: dict, facts: FactValues, ctx: HostContext):
    """`line` is in `path` exactly once, replacing the lines matching `regexp` (or removed)."""
    path, line = args["path"], args["line"]
    if "\n" in line:
        return Failure("line must be a single line")
    info = facts[PathState(path, True)]
    if info is not None and info.kind != "file":
        return Failure(f"{path} is a {info.kind}, not a file")
    if info is not None and info.content is None:
        return Failure(f"{path} is too large to edit line by line")
    old = (info.content or b"").decode() if info else ""
    lines = old.splitlines()
    pattern = re.compile(args["regexp"]) if args.get("regexp") else None
    matches = [i for i, text in enumerate(lines)
               if text == line or (pattern and pattern.search(text))]
    if args.get("state", "present") == "absent":
        new_lines = [text for i, text in enumerate(lines) if i not in matches]
    elif matches:
        new_lines = [line if i == matches[0] else text
                     for i, text in enumerate(lines) if i == matches[0] or i not in matches]
    else:
        new_lines = lines + [line]
    new = "\n".join(new_lines) + ("\n" if new_lines else "")
    if new == old:
        return NoChange(f"{path} already has the line" if args.get("state", "present") ==
                        "present" else f"{path} does not have the line")
    return _content_change(path, info, new.encode(), args, "line", backup=True)


@operation("copy", [Setting("src", "path"), DEST, MODE, OWNER, GROUP,
                    Setting("sha256", "str")],
           required=("src", "dest"), facts=lambda a: [PathState(a["dest"])])
def copy_op(args: dict, facts: FactValues, ctx: HostContext):
    """`dest` is a copy of the controller file `src` (checked by sha256 on both ends)."""
    src = Path(args["src"])
    if not src.is_absolute() and ctx.role_dir is not None:
        src = ctx.role_dir / "files" / src
    try:
        data = src.read_bytes()
    except OSError as exc:
        return Failure(f"cannot read {src} on the controller: {exc.strerror}")
    digest = hashlib.sha256(data).hexdigest()
    if args.get("sha256") and args["sha256"].lower() != digest:
        return Failure(f"{src} has sha256 {digest}, expected {args['sha256']}; refusing to copy")
    return _content_change(args["dest"], facts[PathState(args["dest"])], data, args,
                           f"copy of {src}", text=False)
