"""One module per recipe step: its handler class (and, for steps added after the recipe
language's first five, its config). `recipe.discover_steps` imports every module here."""
