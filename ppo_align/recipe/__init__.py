"""Recipes: the typed schema, loading with overrides, the second-pass checks, and the generated reference.
"""

from ppo_align.recipe.load import ShippedRecipe, load_recipe, shipped_recipes
from ppo_align.recipe.schema import Recipe

__all__ = ["Recipe", "ShippedRecipe", "load_recipe", "shipped_recipes"]
