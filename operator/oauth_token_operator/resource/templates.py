"""Output Secret templates: extra keys rendered from the token response and user values.

The language is Jinja's expression subset in a sandbox, and deliberately small: text,
`{{ expressions }}` over a fixed set of names, `{% if %}`, and a short list of filters. No
loops, assignments, macros, calls, includes or attribute access beyond `values.<name>`, so a
template can neither run code nor read files nor loop. What it renders is bounded before it
is rendered (`render` computes the largest possible output from the actual value sizes), so a
template cannot exhaust the operator's memory either: whoever may write an OAuthClient gets
no more than a text substitution."""

from __future__ import annotations

import base64
import functools
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

# The names a template can use; `values` holds the literal values and the ConfigMap's.
TOKEN_NAMES = (
    "access_token",
    "token_type",
    "expires_at",
    "issued_at",
    "expires_in",
    "scope",
    "id_token",
)
NAMES = (*TOKEN_NAMES, "values")
MAX_RENDERED = 256 * 1024  # one key; the whole Secret may hold 1 MiB


def _b64encode(value: str) -> str:
    return base64.b64encode(str(value).encode()).decode()


def _tojson(value: Any) -> str:
    # Jinja's own tojson escapes for HTML; a JSON file or header wants plain JSON.
    return json.dumps(value)


def _urlencode(value: str) -> str:
    return urllib.parse.quote(str(value), safe="")


# name -> (function, the most characters one input character can become)
_FILTERS: dict[str, tuple[Callable[..., Any], int]] = {
    "tojson": (_tojson, 12),  # \uXXXX, twice for a character beyond the BMP
    "b64encode": (_b64encode, 6),  # up to 4 UTF-8 bytes, 4/3 each
    "urlencode": (_urlencode, 12),  # up to 4 UTF-8 bytes, %XX each
    "lower": (lambda v: str(v).lower(), 3),
    "upper": (lambda v: str(v).upper(), 3),
    "trim": (lambda v: str(v).strip(), 1),
}
_TESTS = ("defined", "undefined", "none")
_ALLOWED_NODES = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Const,
    nodes.Name,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Filter,
    nodes.Test,
    nodes.Concat,
    nodes.CondExpr,
    nodes.If,
    nodes.Not,
    nodes.And,
    nodes.Or,
    nodes.Compare,
    nodes.Operand,
    nodes.Dict,  # for `{...} | tojson`
    nodes.Pair,
    nodes.List,
)
_WHAT = {
    nodes.For: "loops",
    nodes.Assign: "{% set %} tags",
    nodes.AssignBlock: "{% set %} tags",
    nodes.Macro: "macros",
    nodes.Call: "function calls",
    nodes.Include: "includes",
    nodes.Import: "imports",
    nodes.FromImport: "imports",
    nodes.Extends: "{% extends %} tags",
    nodes.Block: "{% block %} tags",
    nodes.Mul: "arithmetic operators",
    nodes.Pow: "arithmetic operators",
    nodes.Add: "arithmetic operators",
}


class TemplateError(ValueError):
    """A template cannot be compiled or rendered; the message says which and where, never a
    value."""

    def __init__(self, key: str, message: str, line: int | None = None) -> None:
        where = f"spec.secret.templates[{key}]" + (f", line {line}" if line else "")
        super().__init__(f"{where}: {message}")


def _environment() -> jinja2.Environment:
    env = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
    )
    env.globals.clear()
    env.filters = {name: fn for name, (fn, _) in _FILTERS.items()}
    env.filters["default"] = jinja2.filters.do_default
    env.tests = {name: env.tests[name] for name in _TESTS}
    return env


_ENV = _environment()


@dataclass(frozen=True)
class Compiled:
    key: str
    tree: nodes.Template
    template: jinja2.Template


def _check(key: str, node: nodes.Node, parent: nodes.Node | None) -> None:
    if not isinstance(node, _ALLOWED_NODES):
        what = next(
            (w for t, w in _WHAT.items() if isinstance(node, t)), f"{type(node).__name__} nodes"
        )
        raise TemplateError(key, f"{what} are not allowed in output templates", node.lineno)
    if isinstance(node, nodes.Name) and node.name not in NAMES:
        raise TemplateError(
            key, f"unknown name {node.name!r} (known: {', '.join(NAMES)})", node.lineno
        )
    if (
        isinstance(node, nodes.Name)
        and node.name == "values"
        and (not isinstance(parent, nodes.Getattr | nodes.Getitem) or parent.node is not node)
    ):
        raise TemplateError(key, "use values.<name>, not values itself", node.lineno)
    if isinstance(node, nodes.Dict | nodes.List) and not (
        isinstance(parent, nodes.Dict | nodes.Pair | nodes.List)
        or (isinstance(parent, nodes.Filter) and parent.name == "tojson" and parent.node is node)
    ):
        raise TemplateError(key, "dict and list literals are only for | tojson", node.lineno)
    if isinstance(node, nodes.Getattr | nodes.Getitem):
        base = node.node
        if not (isinstance(base, nodes.Name) and base.name == "values") or (
            isinstance(node, nodes.Getitem) and not isinstance(node.arg, nodes.Const)
        ):
            raise TemplateError(key, "only values.<name> or values['<name>'] look up", node.lineno)
    for child in node.iter_child_nodes():
        _check(key, child, node)


@functools.lru_cache(maxsize=4096)
def compile_template(key: str, source: str) -> Compiled:
    """Parses and checks a template; raises TemplateError with the line of the problem."""
    try:
        tree = _ENV.parse(source)
        _check(key, tree, None)
        template = _ENV.from_string(source)  # after the check: an unknown filter or test
        bound(tree, {}, {})  # deep nesting fails here, not at the first render
    except TemplateError:
        raise
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(key, exc.message or "syntax error", exc.lineno) from None
    except RecursionError:
        raise TemplateError(key, "nested too deeply") from None
    except (ValueError, OverflowError, MemoryError) as exc:
        # Python refuses integer literals of over 4,300 digits, for one.
        raise TemplateError(key, f"cannot be compiled ({type(exc).__name__})") from None
    return Compiled(key, tree, template)


def _value_key(node: nodes.Getattr | nodes.Getitem) -> str:
    if isinstance(node, nodes.Getattr):
        return node.attr
    assert isinstance(node.arg, nodes.Const)
    return str(node.arg.value)


def bound(node: nodes.Node, sizes: Mapping[str, int], values: Mapping[str, str]) -> int:
    """The most characters `node` can render to, given the sizes of the names and values."""
    if isinstance(node, nodes.TemplateData):
        return len(node.data)
    if isinstance(node, nodes.Const):
        return len(str(node.value))
    if isinstance(node, nodes.Name):
        return sizes.get(node.name, 0)
    if isinstance(node, nodes.Getattr | nodes.Getitem):
        return len(values.get(_value_key(node), ""))
    if isinstance(node, nodes.Filter):
        assert node.node is not None
        inner = bound(node.node, sizes, values)
        if node.name == "default":
            return max([inner, *(bound(a, sizes, values) for a in node.args)])
        return _FILTERS[node.name][1] * inner + 4
    if isinstance(node, nodes.Test | nodes.Not | nodes.Compare):
        return 5  # True / False
    if isinstance(node, nodes.CondExpr):
        other = bound(node.expr2, sizes, values) if node.expr2 is not None else 0
        return max(bound(node.expr1, sizes, values), other)
    if isinstance(node, nodes.And | nodes.Or):  # Jinja returns one of the operands
        return max(bound(node.left, sizes, values), bound(node.right, sizes, values), 5)
    if isinstance(node, nodes.Dict | nodes.List):  # only under tojson, which escapes once
        children = list(node.iter_child_nodes())
        return sum(bound(c, sizes, values) for c in children) + 8 * len(children) + 2
    if isinstance(node, nodes.If):
        branches = [node.body, *(b.body for b in node.elif_), node.else_]
        return max(sum(bound(n, sizes, values) for n in branch) for branch in branches)
    return sum(bound(child, sizes, values) for child in node.iter_child_nodes())


def render(compiled: Compiled, context: Mapping[str, str], values: Mapping[str, str]) -> str:
    """Renders one template; raises TemplateError if it could exceed MAX_RENDERED or names a
    value that is not there."""
    sizes = {name: len(str(value)) for name, value in context.items()}
    largest = bound(compiled.tree, sizes, values)
    if largest > MAX_RENDERED:
        raise TemplateError(
            compiled.key,
            f"could render up to {largest} characters with these values; the limit is "
            f"{MAX_RENDERED}",
        )
    try:
        text = compiled.template.render(**context, values=SimpleNamespace(**values))
        text.encode()  # a lone surrogate ("\ud800") renders but can never be written
        return text
    except UnicodeEncodeError:
        raise TemplateError(compiled.key, "renders text that is not valid UTF-8") from None
    except RecursionError:
        raise TemplateError(compiled.key, "nested too deeply") from None
    except jinja2.UndefinedError as exc:
        missing = re.search(r"has no attribute '([^']*)'", exc.message or "")
        what = f"no value named {missing.group(1)!r}" if missing else exc.message or "undefined"
        raise TemplateError(
            compiled.key, f"{what} (spec.secret.values or spec.secret.valuesFrom)"
        ) from None
    except (jinja2.TemplateError, TypeError, ValueError) as exc:
        raise TemplateError(compiled.key, f"{type(exc).__name__}: {exc}") from None
