"""Roles: roles/<name>/role.yml with typed arguments and ordered tasks, rendered with jinja2.

    description: one line
    args:                      # typed; defaults <- inventory vars (all <- groups <- host)
      ntp_max_offset_ms: {type: float, default: 100, min: 0, help: ...}
    tasks:
      - name: chrony configuration
        op: template           # an operation from provision.operations
        args: {src: chrony.conf.j2, dest: /etc/chrony/chrony.conf}
        when: ntp_servers      # a jinja2 expression
        tags: [config]
      - name: restart chrony
        op: command
        args: {argv: [systemctl, restart, chrony]}
        if_changed: [chrony configuration]   # runs only when one of these tasks changed
    cluster_checks: [ntp_skew]  # checks across hosts, run once every host has run its tasks
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import yaml

from provision._shipped import shipped
from provision.checks import CLUSTER_CHECKS, CheckContext
from provision.errors import RoleError
from provision.operations import REGISTRY, Operation
from provision.settings import TYPES, Setting, check_value, suggest
from provision.templating import environment

if TYPE_CHECKING:
    from provision.inventory import Host, Inventory
    from provision.session import HostSession

ROLE_KEYS = ("description", "order", "args", "tasks", "cluster_checks")
TASK_KEYS = ("name", "op", "args", "when", "tags", "if_changed")
ARG_KEYS = ("type", "default", "help", "min", "max", "choices", "item", "required")
# The roles shipped with provision: package data (the repository's top-level roles/ in a checkout).
ROLES_DIR = shipped("roles")

_JINJA = environment()


@dataclass(frozen=True)
class Task:
    name: str
    op: Operation
    args: dict[str, Any]        # unrendered: values may hold jinja2 templates
    when: str | None
    tags: tuple[str, ...]
    where: str                  # file:line, for error messages
    if_changed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Role:
    name: str
    path: Path
    description: str
    args: dict[str, Setting]
    defaults: dict[str, Any]
    tasks: tuple[Task, ...]
    cluster_checks: tuple[str, ...] = ()
    required: tuple[str, ...] = ()  # args marked `required: true`: every host must set them
    order: int | None = None        # where the role runs among the others (lower first)

    def variables(self, host_vars: dict[str, Any]) -> dict[str, Any]:
        """Template variables: role defaults overridden by the host's inventory vars."""
        return {**self.defaults, **host_vars}

    def runs(self, task: Task, tags: frozenset[str]) -> bool:
        """--tags selects `task`: one of its tags, or the role's name (no --tags: every task)."""
        return not tags or bool(tags & {self.name, *task.tags})

    def selected(self, tags: frozenset[str]) -> bool:
        """--tags selects the role: its name, or a tag of one of its tasks."""
        return not tags or self.name in tags or any(tags & set(t.tags) for t in self.tasks)


def template_variables(inventory: Inventory, host: Host, role: Role | None) -> dict[str, Any]:
    """What a role's `when:` and templates see on `host`: its variables (the role's defaults
    under the host's inventory vars), `inventory_hostname`, `host`, `hosts` and `groups`."""
    base = role.variables(host.vars) if role else dict(host.vars)
    return {**base, "inventory_hostname": host.name, "host": host,
            "hosts": list(inventory.hosts.values()),
            "groups": {name: g.hosts for name, g in inventory.groups.items()}}


def check_context(sessions: dict[str, HostSession], inventory: Inventory, role: Role,
                  check_mode: bool, forks: int = 16) -> CheckContext:
    """What the role's cross-host checks are given: built once per role, each host's variables
    exactly as its tasks saw them."""
    return CheckContext(sessions, inventory, role, check_mode,
                        {name: template_variables(inventory, inventory.hosts[name], role)
                         for name in sessions}, forks)


def _check_keys(mapping: dict, allowed: tuple[str, ...], where: str, what: str) -> list[str]:
    problems = []
    for key in mapping:
        if key not in allowed:
            hint = suggest(str(key), list(allowed))
            problems.append(f"{where}: {what}: unknown key {key!r}"
                            + (f" (did you mean {hint!r}?)" if hint else ""))
    return problems


class _LineLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """Records the line of every mapping so task errors can point at them. libyaml's loader
    where PyYAML has it: the pure-Python one took ~0.1 s of every run to read the roles."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict:
    mapping = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _strip_lines(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_lines(v) for k, v in value.items() if k != "__line__"}
    if isinstance(value, list):
        return [_strip_lines(v) for v in value]
    return value


def load_role(name: str, roles_dir: Path = ROLES_DIR) -> Role:
    path = roles_dir / name / "role.yml"
    try:
        data = yaml.load(path.read_text(), Loader=_LineLoader)
    except FileNotFoundError:
        known = sorted(p.name for p in roles_dir.iterdir() if (p / "role.yml").is_file()) \
            if roles_dir.is_dir() else []
        hint = suggest(name, known)
        raise RoleError(f"no role {name!r} in {roles_dir}"
                        + (f" (did you mean {hint!r}?)" if hint else "")) from None
    except yaml.YAMLError as exc:
        raise RoleError(f"{path}: malformed YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RoleError(f"{path}: a role file must be a mapping with {', '.join(ROLE_KEYS)}")
    problems = _check_keys(data, (*ROLE_KEYS, "__line__"), str(path), "role")
    for key, kind in (("args", dict), ("tasks", list), ("cluster_checks", list)):
        if not isinstance(data.get(key) or kind(), kind):
            raise RoleError(f"{path}: {key} must be a {'mapping' if kind is dict else 'list'}")
    args: dict[str, Setting] = {}
    defaults: dict[str, Any] = {}
    required: list[str] = []
    for arg, spec in (data.get("args") or {}).items():
        if arg == "__line__":
            continue
        where = f"{path}:{spec.get('__line__', '?') if isinstance(spec, dict) else '?'}"
        if not isinstance(spec, dict) or spec.get("type") not in TYPES:
            problems.append(f"{where}: argument {arg!r} needs a type, one of {', '.join(TYPES)}")
            continue
        problems += _check_keys(spec, (*ARG_KEYS, "__line__"), where, f"argument {arg!r}")
        choices = spec.get("choices")
        setting = Setting(arg, spec["type"], spec.get("help", ""), spec.get("min"),
                          spec.get("max"), tuple(choices) if choices else None, spec.get("item"))
        args[arg] = setting
        if not isinstance(spec.get("required", False), bool):
            problems.append(f"{where}: required of {arg!r} must be true or false")
        elif spec.get("required"):
            if spec.get("default") is not None:
                problems.append(f"{where}: argument {arg!r} is required and has a default: "
                                "drop one (a default makes it optional)")
            required.append(arg)
        if "default" in spec:
            default = _strip_lines(spec["default"])
            problem = check_value(setting, default) if default is not None else None
            if problem:
                problems.append(f"{where}: default of {arg!r} {problem}")
            defaults[arg] = default
    tasks = []
    for raw in data.get("tasks") or []:
        where = f"{path}:{raw.get('__line__', '?') if isinstance(raw, dict) else '?'}"
        if not isinstance(raw, dict):
            problems.append(f"{where}: a task must be a mapping")
            continue
        problems += _check_keys(raw, (*TASK_KEYS, "__line__"), where, "task")
        op = REGISTRY.get(raw.get("op"))
        if op is None:
            hint = suggest(str(raw.get("op")), list(REGISTRY))
            problems.append(f"{where}: unknown op {raw.get('op')!r}"
                            + (f" (did you mean {hint!r}?)" if hint else ""))
            continue
        task_args = _strip_lines(raw.get("args") or {})
        problems += _check_keys(task_args, tuple(op.args), where, f"op {op.name}")
        problems += [f"{where}: op {op.name} needs {req!r}" for req in op.required
                     if req not in task_args]
        if_changed = tuple(raw.get("if_changed") or ())
        earlier = {t.name for t in tasks}
        problems += [f"{where}: if_changed names {name!r}, which is not an earlier task"
                     for name in if_changed if name not in earlier]
        tasks.append(Task(str(raw.get("name") or op.name), op, task_args, raw.get("when"),
                          tuple(raw.get("tags") or ()), where, if_changed))
    order = data.get("order")
    if order is not None and (not isinstance(order, int) or isinstance(order, bool)):
        problems.append(f"{path}: order must be an integer (lower runs first), not {order!r}")
    checks = tuple(data.get("cluster_checks") or ())
    for check in checks:
        if check not in CLUSTER_CHECKS:
            hint = suggest(str(check), list(CLUSTER_CHECKS))
            problems.append(f"{path}: unknown cluster check {check!r}"
                            + (f" (did you mean {hint!r}?)" if hint else ""))
    if problems:
        raise RoleError("\n".join(problems))
    return Role(name, path.parent, str(data.get("description", "")), args, defaults,
                tuple(tasks), checks, tuple(required), order)


def render(value: Any, variables: dict[str, Any]) -> Any:
    """Render jinja2 in strings; a string that is one `{{ expr }}` keeps the value's type."""
    if isinstance(value, dict):
        return {k: render(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, variables) for v in value]
    if not isinstance(value, str) or ("{{" not in value and "{%" not in value):
        return value
    text = value.strip()
    if text.startswith("{{") and text.endswith("}}") and text.count("{{") == 1:
        return _expression(text[2:-2].strip(), variables)
    return _template(value).render(**variables)


# Compiled once per process, not once per host and task: compiling is most of the controller's
# CPU per host otherwise.
@functools.lru_cache(maxsize=None)
def _template(source: str) -> jinja2.Template:
    return _JINJA.from_string(source)


@functools.lru_cache(maxsize=None)
def _compiled(expression: str):
    # compile_expression turns an undefined result into None by default, which would hide a
    # misspelt variable (a `when:` typo silently skipping its task): raise as templates do.
    return _JINJA.compile_expression(expression, undefined_to_none=False)


def _expression(expression: str, variables: dict[str, Any]) -> Any:
    value = _compiled(expression)(**variables)
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return value


def evaluate(expression: str, variables: dict[str, Any]) -> bool:
    return bool(_expression(expression, variables))


def check_args(task: Task, args: dict[str, Any]) -> list[str]:
    """Type problems of a task's rendered args."""
    return [f"{task.where}: {task.op.name} arg {key}: {problem}"
            for key, value in args.items()
            if (problem := check_value(task.op.args[key], value)) is not None]
