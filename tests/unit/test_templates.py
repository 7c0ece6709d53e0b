"""Output templates: what they render, what they refuse, and that what they could render is
bounded before they render."""

from __future__ import annotations

import base64
import json
import random

import pytest

from oauth_token_operator.resource.templates import (
    MAX_RENDERED,
    TemplateError,
    bound,
    compile_template,
    render,
)

TOKEN = {
    "access_token": 'eyJ"tok\\en',
    "token_type": "Bearer",
    "expires_at": "2026-11-25T10:00:00Z",
    "issued_at": "2026-11-25T09:00:00Z",
    "expires_in": "3600",
    "scope": "",
    "id_token": "",
}


def rendered(source: str, values: dict[str, str] | None = None) -> str:
    return render(compile_template("k", source), TOKEN, values or {})


def test_header_line() -> None:
    assert rendered("Authorization: {{ token_type }} {{ access_token }}\n") == (
        'Authorization: Bearer eyJ"tok\\en\n'
    )


def test_docker_config_is_valid_json_with_the_token_escaped() -> None:
    source = (
        '{{ {"auths": {values.registry: {"username": values.username, "password": '
        'access_token, "auth": (values.username ~ ":" ~ access_token) | b64encode}}} | tojson }}'
    )
    text = rendered(source, {"registry": "registry.example.com", "username": "oauth2"})
    auth = json.loads(text)["auths"]["registry.example.com"]
    assert auth["password"] == TOKEN["access_token"]
    assert base64.b64decode(auth["auth"]).decode() == f"oauth2:{TOKEN['access_token']}"


def test_tojson_escapes_inside_a_hand_written_document() -> None:
    text = rendered('{"token": {{ access_token | tojson }}, "n": {{ expires_in }}}')
    assert json.loads(text) == {"token": TOKEN["access_token"], "n": 3600}


def test_conditions_and_defaults() -> None:
    source = "{% if id_token %}id{% else %}no id{% endif %} {{ values.user | default('x') }}"
    assert rendered(source) == "no id x"
    assert rendered(source, {"user": "bob"}) == "no id bob"
    assert rendered("{{ values['a-b'] | upper }}", {"a-b": "v"}) == "V"


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("{% for c in access_token %}{{ c }}{% endfor %}", "loops are not allowed"),
        ("{% set t = access_token %}{{ t }}", "{% set %} tags are not allowed"),
        ("{{ range(10) }}", "function calls are not allowed"),
        ("{{ access_token * 1000 }}", "arithmetic operators are not allowed"),
        ("{{ access_token.__class__ }}", "only values.<name>"),
        ("{{ values }}", "use values.<name>"),
        ("{{ refresh_token }}", "unknown name 'refresh_token'"),
        ("{{ access_token | center(1000000) }}", "No filter named 'center'"),
        ("{% include 'x' %}", "includes are not allowed"),
        ('{{ {"a": access_token} }}', "only for | tojson"),
        ("line one\n{{ access_token ", "line 2"),
    ],
)
def test_refused_at_compile_time_with_the_reason(source: str, words: str) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template("k", source)
    assert words in str(caught.value)
    assert str(caught.value).startswith("spec.secret.templates[k]")


def test_a_missing_value_is_named_without_any_value() -> None:
    with pytest.raises(TemplateError) as caught:
        rendered("{{ values.registry }}", {"other": "hidden-value"})
    assert "no value named 'registry'" in str(caught.value)
    assert "hidden-value" not in str(caught.value)


def test_output_larger_than_the_limit_is_refused_before_rendering() -> None:
    source = "{{ (values.a ~ values.a ~ values.a) | tojson | b64encode }}"
    with pytest.raises(TemplateError, match="could render up to"):
        rendered(source, {"a": "x" * (MAX_RENDERED // 50)})


def test_the_bound_is_never_below_what_renders() -> None:
    """Random values (with quotes, control and astral characters) through every filter."""
    rng = random.Random(7)
    alphabet = ['"', "\\", "\n", "a", "ß", "é", "\U0001f600", "\x01", " ", "%"]
    sources = [
        "{{ access_token | tojson }}",
        "{{ access_token | b64encode }}",
        "{{ access_token | urlencode }}",
        "{{ access_token | upper }}{{ values.v | lower | trim }}",
        '{{ {"a": [access_token, values.v]} | tojson }}',
        '{{ {"a": {"b": [values.v, {"c": access_token}]}} | tojson | b64encode }}',
        "{% if values.v %}{{ values.v ~ access_token }}{% else %}{{ scope }}{% endif %}",
        "{{ values.missing | default(access_token) | tojson | b64encode }}",
    ]
    for _ in range(200):
        token = {**TOKEN, "access_token": "".join(rng.choices(alphabet, k=rng.randint(0, 40)))}
        values = {"v": "".join(rng.choices(alphabet, k=rng.randint(0, 40)))}
        sizes = {k: len(v) for k, v in token.items()}
        for source in sources:
            compiled = compile_template("k", source)
            text = render(compiled, token, values)
            assert len(text) <= bound(compiled.tree, sizes, values), source


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("{{ " + "9" * 5000 + " }}", "cannot be compiled"),  # Python's integer-digit limit
        ("{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}", "nested too deeply"),
    ],
)
def test_what_python_itself_refuses_is_a_template_error(source: str, words: str) -> None:
    """No ValueError or RecursionError escapes: the client gets InvalidSpec, not a handler
    failure logged on every event."""
    with pytest.raises(TemplateError, match=words):
        compile_template("k", source)


def test_a_lone_surrogate_is_refused_at_render_not_at_the_write() -> None:
    with pytest.raises(TemplateError, match="not valid UTF-8"):
        rendered('{{ "\\ud800" }}')
