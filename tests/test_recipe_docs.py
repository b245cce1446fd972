"""docs/recipes.md is generated from the recipe schema; these tests keep it current and complete."""

from pathlib import Path
from typing import get_args

from pydantic import BaseModel

from ppo_align.recipe.docs import render_recipe_reference
from ppo_align.recipe.schema import Recipe

DOCS = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"


def _schema_keys(model: type[BaseModel], prefix: str = ""):
    """Every (dotted key, is_section) in the schema, walked independently of recipe_docs."""
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        stack, members = [field.annotation], []
        while stack:  # unpack X | None, Union[...], Annotated[...]
            tp = stack.pop()
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                members.append(tp)
            else:
                stack += get_args(tp)
        yield key, bool(members)
        for member in members:
            yield from _schema_keys(member, key)


def _row(text: str, key: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| `{key}` |"))


def test_committed_reference_is_current():
    assert DOCS.is_file(), "docs/recipes.md is missing; fix: make docs"
    assert DOCS.read_text(encoding="utf-8") == render_recipe_reference(), "docs/recipes.md is stale; fix: make docs"


def test_every_schema_key_is_documented():
    text = render_recipe_reference()
    headings = {line.lstrip("#").strip().split(" (")[0] for line in text.splitlines() if line.startswith("#")}
    keys = list(_schema_keys(Recipe))
    assert len(keys) > 50  # the walk really reached the nested sections and every reward source
    missing = [k for k, section in keys if (k not in headings if section else f"| `{k}` |" not in text)]
    assert not missing, f"recipe keys missing from the reference: {missing}"
    for source in ("function", "model", "judge", "trained"):
        assert f"## reward (source: {source})" in text


def test_rows_show_types_defaults_ranges_and_meaning():
    text = render_recipe_reference()
    epochs = _row(text, "ppo.num_ppo_epochs")  # Field(1, ge=1)
    assert "| `int` | `1` | ≥ 1 |" in epochs and "Optimisation passes" in epochs
    assert "≥ 1, ≤ 1024" in _row(text, "model.lora.r")
    assert "| required |" in _row(text, "data.prompts")
    # Literal and optional types: pipes escaped so the table keeps five columns.
    assert '`"k1" \\| "k3"`' in _row(text, "ppo.kl_estimator")
    assert "`int \\| dict[str, int] \\| None`" in _row(text, "eval.limit")
    assert "values ≥ 0, ≤ 1" in _row(text, "monitor.min_refusal")
