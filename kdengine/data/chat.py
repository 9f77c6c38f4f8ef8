"""Chat templates rendered as transformers' `apply_chat_template` renders them.

The template comes from the model's tokenizer files: chat_template.jinja (and
additional_chat_templates/*.jinja) first, else tokenizer_config.json's `chat_template` (one
string, or a list of {name, template}). It runs in jinja2's immutable sandbox with the settings,
globals and filters transformers gives it (trim_blocks, lstrip_blocks, loopcontrols,
raise_exception, strftime_now, tojson with its keyword arguments, a safe `dict` and
`namespace`, and the `{% generation %}` block that marks what the assistant wrote), and sees
the tokenizer's special tokens (bos_token, eos_token, ...) as variables, as transformers passes
them. jinja2 is imported only when a template is compiled: text-only runs never load it.
"""

from __future__ import annotations

import json
import re
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from kdengine.config import ConfigError

TEMPLATE_FILE = "chat_template.jinja"
TEMPLATE_DIR = "additional_chat_templates"
# the named special tokens transformers hands every template (its SPECIAL_TOKENS_ATTRIBUTES)
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")

Span = tuple[int, int]  # [start, end) in characters of a rendered chat


@dataclass(frozen=True)
class ChatTemplate:
    """One chat template and the special tokens it sees. `source` names where it came from."""

    text: str
    special_tokens: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def marks_generation(self) -> bool:
        """Whether the template wraps assistant output in `{% generation %}` blocks."""
        return bool(_GENERATION_TAG.search(self.text))

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False,
               **variables: Any) -> str:
        """The chat as text, exactly as apply_chat_template(tokenize=False) renders it."""
        return self.render_with_spans(messages, add_generation_prompt, **variables)[0]

    def render_with_spans(self, messages: list[dict[str, Any]],
                          add_generation_prompt: bool = False,
                          **variables: Any) -> tuple[str, list[Span]]:
        """The chat as text, and the character spans the template's `{% generation %}` blocks
        rendered (none when it has no such blocks)."""
        template = _compile(self.text)
        context = {**self.special_tokens, **variables}
        messages = [_without_none(m) for m in messages]
        blocks: list[str] = []
        spans: list[Span] = []
        token = _TRACKER.set((blocks, spans))
        try:
            for block in template.generate(messages=messages, tools=None, documents=None,
                                           add_generation_prompt=add_generation_prompt,
                                           **context):
                blocks.append(block)
        finally:
            _TRACKER.reset(token)
        return "".join(blocks), spans


# (blocks rendered so far, spans) while a render runs; a ContextVar, as render may nest in threads
_TRACKER: ContextVar[tuple[list[str], list[Span]] | None] = ContextVar("kd_chat_spans",
                                                                       default=None)


# names a message's reasoning goes by; templates read the first (gpt-oss style ones, `thinking`)
_REASONING_NAMES = ("reasoning_content", "thinking", "reasoning")


def _without_none(message: dict[str, Any]) -> dict[str, Any]:
    """The message as transformers hands it to templates: None-valued keys dropped (templates
    test `is defined`, and would print "None"), reasoning under both names templates read."""
    message = {k: v for k, v in message.items() if v is not None}
    reasoning = next((message[k] for k in _REASONING_NAMES if k in message), None)
    if reasoning is not None:
        message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
    return message


def load_chat_template(directory: Path, name: str | None = None,
                       field_name: str = "teacher") -> ChatTemplate | None:
    """The tokenizer's chat template in `directory`, or None when it has none. `name` picks one
    of several named templates (default: "default", as transformers picks)."""
    directory = Path(directory)
    config = _read_json(directory / "tokenizer_config.json", field_name)
    specials = special_tokens(directory, config, field_name)
    templates: dict[str, str] = {}
    if (directory / TEMPLATE_FILE).is_file():
        templates["default"] = _read_template(directory / TEMPLATE_FILE, field_name)
    if (directory / TEMPLATE_DIR).is_dir():
        for path in sorted((directory / TEMPLATE_DIR).glob("*.jinja")):
            templates[path.name.removesuffix(".jinja")] = _read_template(path, field_name)
    source = str(directory / TEMPLATE_FILE)
    if not templates:  # separate files take priority over the config's entry, as in transformers
        raw = config.get("chat_template")
        source = f"{directory / 'tokenizer_config.json'} chat_template"
        if isinstance(raw, str):
            templates["default"] = raw
        elif isinstance(raw, list):
            try:
                templates = {t["name"]: t["template"] for t in raw}
            except (TypeError, KeyError):
                raise ConfigError(field_name, f"{source} is a list, but not of "
                                  "{\"name\", \"template\"} entries") from None
        elif raw is not None:
            from kdengine.data.formats import json_kind

            raise ConfigError(field_name, f"{source} is {json_kind(raw)}: it must be a string "
                              "(the template) or a list of {\"name\", \"template\"} entries")
    if not templates:
        return None
    wanted = name or "default"
    if wanted not in templates:
        raise ConfigError(field_name, f"{directory} has no chat template named {wanted!r} "
                          f"(it has {', '.join(sorted(templates))})")
    return ChatTemplate(templates[wanted], specials, f"{source} ({wanted})"
                        if len(templates) > 1 else source)


def special_tokens(directory: Path, config: dict[str, Any],
                   field_name: str = "teacher") -> dict[str, str]:
    """bos_token, eos_token, ... as strings: tokenizer_config.json's, else
    special_tokens_map.json's (either as a string or as {"content": ...})."""
    legacy = _read_json(Path(directory) / "special_tokens_map.json", field_name)
    out: dict[str, str] = {}
    for key in SPECIAL_TOKEN_NAMES:
        value = config.get(key, legacy.get(key))
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


def _read_template(path: Path, field_name: str) -> str:
    """A template file's text (UTF-8, as transformers reads it); ConfigError naming the file
    when it is not UTF-8 (a Windows editor's cp1252) or cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(field_name, f"{path} is not UTF-8 text (byte "
                          f"0x{exc.object[exc.start]:02x} at offset {exc.start}): save it as "
                          "UTF-8") from None
    except OSError as exc:
        raise ConfigError(field_name, f"cannot read {path}: {exc.strerror or exc}") from None


def _read_json(path: Path, field_name: str) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(field_name, f"cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


@lru_cache(maxsize=16)
def _compile(text: str):
    try:
        return _environment().from_string(text)
    except Exception as exc:  # jinja2.TemplateSyntaxError, without importing jinja2 here
        line = getattr(exc, "lineno", None)
        where = f" (template line {line})" if line else ""
        raise ConfigError("teacher", f"its chat template does not compile{where}: "
                          f"{exc}") from None


@lru_cache(maxsize=1)
def _environment():
    """The sandboxed environment transformers renders chat templates in."""
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ConfigError("data", "chat data needs jinja2: pip install 'kdtui[engine]'") from None

    class GenerationBlock(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}`: renders its body, and records where."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_record", []), [], [],
                                          body).set_lineno(lineno)

        def _record(self, caller) -> str:
            text = caller()
            if (tracking := _TRACKER.get()) is not None:
                blocks, spans = tracking
                start = sum(len(b) for b in blocks)
                spans.append((start, start + len(text)))
            return text

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson escapes HTML characters; templates expect plain JSON
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    class SafeDict:
        """`dict(...)` in templates, without the class itself (no attribute escapes)."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class SafeNamespace(jinja2.utils.Namespace):
        """`namespace(...)` that refuses underscore names (no reach into CPython internals)."""

        def __init__(*args, **kwargs):  # Namespace's own signature trick: namespace(self=...)
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                SafeNamespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            SafeNamespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot set underscore attributes on a namespace ({name!r})")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now,
                       dict=SafeDict(), namespace=SafeNamespace)
    return env


def render_error(exc: Exception) -> str:
    """A template's own error (raise_exception, a bad variable) in one line."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
