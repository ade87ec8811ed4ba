"""The one kind of jinja2 environment provision renders with: sandboxed, strict.

Only role files (task args, `when:`, templates/) are ever compiled as templates; inventory values
are data, passed in as variables and never compiled. The sandbox still guards the role side:
a variable holding an object (`host`, `hosts`) cannot lead an expression to Python internals.
"""

from __future__ import annotations

import jinja2
from jinja2.sandbox import SandboxedEnvironment


def environment(**options) -> SandboxedEnvironment:
    return SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, **options)
