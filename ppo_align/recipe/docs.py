"""Render docs/recipes.md, the recipe reference, from the typed schema in recipe.py.

The schema is the single source of truth: every key, type, default, range and meaning
comes from the pydantic models and their attribute docstrings, so the reference cannot
drift from what `ppo-align validate` accepts (tests/test_recipe_docs.py checks it is current).

    python -m ppo_align.recipe.docs [OUTPUT]    # default: docs/recipes.md in the repository
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ppo_align.recipe.schema import Recipe

COMMAND = "make docs"
INTRO = (
    f"Generated from `ppo_align/recipe/schema.py` by `{COMMAND}` (`python -m ppo_align.recipe.docs`); "
    "do not edit by hand. `ppo-align recipe show NAME` prints a recipe with every default filled in."
)


def render_recipe_reference() -> str:
    """The whole reference: the top-level keys under the title, then one section per Recipe field."""
    return "\n".join(_block("Recipe reference", "", Recipe, [INTRO, _doc(Recipe)], level=1)) + "\n"


def _block(title: str, prefix: str, model: type[BaseModel], docs: list[str], level: int) -> list[str]:
    """Heading, prose, a table of the model's plain keys, then a sub-block per nested model."""
    lines = ["#" * level + " " + title, ""] + [d + "\n" for d in docs if d]
    # A key that takes a value or a mapping (a file path or a dataset) gets a row and a block of its own.
    plain = {n: f for n, f in model.model_fields.items() if not _models(f.annotation) or _takes_a_value(f.annotation)}
    if plain:
        lines += ["| key | type | default | valid range | meaning |", "|---|---|---|---|---|"]
        lines += [_row(_key(prefix, n), f) for n, f in plain.items()] + [""]
    for name, field in model.model_fields.items():
        if name not in plain:
            lines += _nested(_key(prefix, name), field, level + 1)
        elif _models(field.annotation):
            member = _models(field.annotation)[0]
            lines += _block(f"{_key(prefix, name)} (as a {member.__name__})", _key(prefix, name), member, [_doc(member)],
                            level + 1)
    return lines


def _takes_a_value(tp: Any) -> bool:
    """Whether a union that holds a section also holds a plain value (not only None)."""
    return any(a is not type(None) and not (isinstance(a, type) and issubclass(a, BaseModel)) for a in get_args(tp))


def _nested(key: str, field: FieldInfo, level: int) -> list[str]:
    """A section field: one block, or for a discriminated union one block per member."""
    members = _models(field.annotation)
    presence = "Required section." if field.is_required() else (
        "Optional section; absent unless written." if field.default is None else "")
    if len(members) == 1:
        return _block(key, key, members[0], [presence, field.description, _doc(members[0])], level)
    tag = field.discriminator
    lines = ["#" * level + " " + key, "", f"{presence} One of {len(members)} kinds, chosen by `{key}.{tag}`.\n"]
    for m in members:
        value = get_args(m.model_fields[tag].annotation)[0]
        lines += _block(f"{key} ({tag}: {value})", key, m, [_doc(m)], level + 1)
    return lines


def _row(key: str, field: FieldInfo) -> str:
    cells = [f"`{key}`", f"`{_type(field.annotation)}`", _default(field), _range(field), _first_paragraph(field.description)]
    # A `|` inside a cell (union types, docstrings) would end the cell; GFM honours `\|` even in code spans.
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _type(tp: Any) -> str:
    """Readable annotation: the user writes YAML, so Python's typing.* spelling is noise."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is type(None):
        return "None"
    if origin is Annotated:
        return _type(args[0])
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    # JSON spelling (null, true, "nf4", []) is also valid YAML, which is what recipes are written in.
    return f"`{json.dumps(field.get_default(call_default_factory=True))}`"


def _range(field: FieldInfo) -> str:
    parts = _bounds(field.metadata)
    inner = [_bounds(info.metadata) for info in _annotated_args(field.annotation)]
    # e.g. dict[str, Annotated[float, Field(ge=0)]]; the same bound on several members of a union is said once
    parts += list(dict.fromkeys(f"values {', '.join(b)}" for b in inner if b))
    values = [json.dumps(v) for v in _literals(field.annotation)]
    if len(values) > 1:  # a single value is a union tag, already shown as the type
        parts.append("one of " + ", ".join(values))
    return ", ".join(parts) or "—"


_OPS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥", "max_length": "length ≤"}


def _bounds(metadata: list) -> list[str]:
    """annotated_types constraints (ge, lt, min_length, ...) and a regex pattern, as text."""
    out = []
    for m in metadata:
        out += [f"{op} {getattr(m, k)}" for k, op in _OPS.items() if getattr(m, k, None) is not None]
        if getattr(m, "pattern", None):
            out.append(f"matches `{m.pattern}`")
    return out


def _annotated_args(tp: Any) -> list:
    """FieldInfo objects carried by Annotated[...] nested inside a container type."""
    found = []
    for a in get_args(tp):
        found += [x for x in get_args(a)[1:] if isinstance(x, FieldInfo)] if get_origin(a) is Annotated else []
        found += _annotated_args(a)
    return found


def _literals(tp: Any) -> list:
    if get_origin(tp) is Literal:
        return list(get_args(tp))
    return [v for a in get_args(tp) for v in _literals(a)]


def _models(tp: Any) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (X, X | None, Union[A, B], ...)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for a in get_args(tp) for m in _models(a)]


def _doc(model: type[BaseModel]) -> str:
    # Python does not inherit class docstrings, so the Section base's text never leaks into a section.
    return " ".join((model.__doc__ or "").split())


def _first_paragraph(text: str | None) -> str:
    return " ".join((text or "").strip().split("\n\n")[0].split())


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_recipe_reference(), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
