"""kdkit: knowledge distillation — train a small student to mimic a large teacher.

Quick use::

    import kdkit
    kdkit.train("recipes/mnist_teacher.yaml")
    result = kdkit.distill("recipes/mnist_kd.yaml")
    print(result.best)
"""

from kdkit.api import cache, distill, evaluate, load_student, seeds, train, tune
from kdkit.errors import KdkitError
from kdkit.recipe import Recipe, load_recipe, recipe_from_dict

__version__ = "0.1.0"
__all__ = ["train", "distill", "cache", "evaluate", "load_student", "seeds", "tune", "Recipe", "load_recipe",
           "recipe_from_dict", "KdkitError"]
