"""Image generators for generated surrogates. Importing the package registers the built-in generators with
`study.data.generators.registry` (shaders.py imports moderngl only when it renders)."""

from study.data.generators import dead_leaves, noise, shaders, strokes  # noqa: F401 - registration side effects
