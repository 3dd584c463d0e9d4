"""Recipes: YAML files parsed into typed, validated stage configs."""

from adapt.config.checks import RecipeError
from adapt.config.recipe import load_recipe

__all__ = ["RecipeError", "load_recipe"]
