"""Loading a recipe: YAML or a dict, --set overrides, and schema errors as one line per problem.

The second pass (:mod:`ppo_align.recipe.checks`) runs only on a recipe that passed the schema.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ppo_align.errors import UserError
from ppo_align.recipe.checks import cross_field_problems, resource_problems
from ppo_align.recipe.schema import Recipe
from ppo_align.resources import shipped_dir

# --------------------------------------------------------------------------- loading


def load_recipe(
    source: str | Path | dict,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    check_resources: bool = True,
) -> Recipe:
    """Load, override and validate a recipe.

    Args:
        source: a YAML file path, the name of a shipped recipe (see :func:`shipped_recipes`),
            or an already parsed dict.
        overrides: ``["ppo.learning_rate=1e-5", ...]`` (values parsed as YAML) or
            ``{"ppo.learning_rate": 1e-5}``.
        check_resources: also check files, packages and model metadata (pass 2). Turn off
            only to inspect a recipe on a machine that cannot run it.

    Raises:
        UserError: listing every problem found, one per line.
    """
    raw, origin, base_dir = _read_source(source)
    for key, value in _parse_overrides(overrides, origin):
        _set_dotted(raw, key, value, origin)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise UserError(*(_describe(err, origin) for err in exc.errors())) from None
    recipe._base_dir = base_dir
    recipe._origin = origin
    problems = cross_field_problems(recipe)
    if check_resources:
        problems += resource_problems(recipe)
    if problems:
        raise UserError(*(f"{origin}: {p}" for p in problems))
    return recipe


def _read_source(source: str | Path | dict) -> tuple[dict, str, Path]:
    if isinstance(source, dict):
        return _deep_copy(source), "recipe", Path.cwd()
    path = Path(source).expanduser()
    if not path.exists():  # a shipped recipe's name (which may hold a dot: qwen2.5-7b-...) rather than a path
        shipped = {r.name: r.path for r in shipped_recipes()}
        if str(source) in shipped:
            path = shipped[str(source)]
    if not path.is_file():
        is_yaml_path = path.suffix in (".yaml", ".yml")
        hint = "" if is_yaml_path else f"; shipped recipes: {', '.join(r.name for r in shipped_recipes())}"
        raise UserError(f"{source}: no such recipe file; fix: check the path (`ppo-align recipes` lists shipped ones){hint}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}{where}: invalid YAML: {problem}; fix: correct the syntax at that line") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file; fix: a recipe is a UTF-8 YAML file") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping (key: value), got {type(raw).__name__}; "
                        "fix: write one `key: value` line per section (`ppo-align recipe show NAME` prints a complete one)")
    return raw, str(path), path.parent.resolve()


def _deep_copy(value):
    return json.loads(json.dumps(value, default=str))


def _parse_overrides(overrides, origin: str) -> list[tuple[str, Any]]:
    if not overrides:
        return []
    if isinstance(overrides, dict):
        return list(overrides.items())
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override {item!r}: expected KEY=VALUE, e.g. --set ppo.learning_rate=1e-5")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        parsed.append((key.strip(), value))
    return parsed


def _set_dotted(raw: dict, key: str, value: Any, origin: str) -> None:
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise UserError(f"override {key}={value!r}: {where} is not a section, so it has no key {parts[i + 1]!r}")
        node = child
    node[parts[-1]] = value


# --------------------------------------------------------------------------- error text


_FIXES = {
    "missing": "add it",
    "float_parsing": "write a number, e.g. 1e-5",
    "float_type": "write a number, e.g. 1e-5",
    "int_parsing": "write a whole number",
    "int_type": "write a whole number",
    "int_from_float": "write a whole number",
    "bool_parsing": "write true or false",
    "bool_type": "write true or false",
    "string_type": "write a string (quote it if YAML reads it as something else)",
    "list_type": "write a list, e.g. [a, b]",
    "dict_type": "write a mapping of key: value lines",
    "model_type": "write a mapping of key: value lines",
    "model_attributes_type": "write a mapping of key: value lines",
    "greater_than": "raise it",
    "greater_than_equal": "raise it",
    "less_than": "lower it",
    "less_than_equal": "lower it",
    "string_pattern_mismatch": "use letters, digits, '.', '_' and '-' only",
    "union_tag_not_found": "add `source:` (function, model, judge or trained)",
    "union_tag_invalid": "use `source:` function, model, judge or trained",
    "finite_number": "write a finite number",
}


def _describe(err: dict, origin: str) -> str:
    """One line for one pydantic error: file, key path, value, why, fix."""
    loc, parent = _schema_path(err["loc"])
    path = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        name = loc[-1]
        choices = list(parent.model_fields) if parent else []
        close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
        fix = f"did you mean {close[0]!r}?" if close else f"fix: remove it (valid keys here: {', '.join(choices)})"
        return f"{origin}: {path}: unknown key; {fix}"
    if kind == "missing":
        return f"{origin}: {path}: required key is missing; fix: add it (see `ppo-align recipes` for complete examples)"
    msg = err["msg"][0].lower() + err["msg"][1:]
    fix = _FIXES.get(kind, "")
    if kind == "literal_error":
        fix = "use one of the values listed"
    value = f" = {_short_repr(err['input'])}" if not isinstance(err.get("input"), dict) else ""
    return f"{origin}: {path}{value}: {msg}" + (f"; fix: {fix}" if fix else "")


def _short_repr(value: Any) -> str:
    """repr cut to a readable length: a huge value (a pasted file, YAML alias bombs) must not flood the one-line error."""
    import reprlib

    short = reprlib.Repr()
    short.maxstring, short.maxother, short.maxlevel = 60, 60, 2
    short.maxlist = short.maxtuple = short.maxdict = 5
    return short.repr(value)


def _schema_path(loc: tuple) -> tuple[list[str], type[BaseModel] | None]:
    """Turn a pydantic error location into a recipe key path.

    Drops the tag pydantic inserts for discriminated unions (``reward.function.path``
    is really ``reward.path``), and returns the model class that owns the last key,
    for "did you mean" suggestions.
    """
    names: list[str] = []
    model: Any = Recipe
    parent = None
    items = list(loc)
    i = 0
    while i < len(items):
        item = items[i]
        if isinstance(item, int):
            names[-1] = f"{names[-1]}[{item}]" if names else f"[{item}]"
            i += 1
            continue
        item = str(item)
        parent = model if isinstance(model, type) and issubclass(model, BaseModel) else None
        names.append(item)
        model = _field_model(parent, item, items[i + 1] if i + 1 < len(items) else None)
        if model == "tagged":  # skip the discriminator tag that follows
            model = _union_member(parent, item, items[i + 1])
            i += 1
        i += 1
    return names, parent


def _field_model(parent, name, following):
    if parent is None or name not in parent.model_fields:
        return None
    annotation = parent.model_fields[name].annotation
    members = _models_in(annotation)
    if len(members) > 1 and following is not None and following in _tags(members):
        return "tagged"
    return members[0] if len(members) == 1 else None


def _union_member(parent, name, tag):
    for member in _models_in(parent.model_fields[name].annotation):
        if tag in _tags([member]):
            return member
    return None


def _models_in(annotation) -> list[type[BaseModel]]:
    from typing import get_args

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in get_args(annotation):
        found += _models_in(arg)
    return found


def _tags(members) -> set[str]:
    from typing import get_args

    tags = set()
    for m in members:
        if "source" in m.model_fields:
            tags.update(get_args(m.model_fields["source"].annotation))
    return tags

# --------------------------------------------------------------------------- shipped recipes


class ShippedRecipe(BaseModel):
    name: str
    path: Path
    description: str


def shipped_recipes() -> list[ShippedRecipe]:
    """Every recipe shipped with the package, with its one-line description."""
    found = []
    for path in sorted(shipped_dir("recipes").glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            raw = {}
        found.append(ShippedRecipe(name=path.stem, path=path, description=str(raw.get("description", ""))))
    return found
