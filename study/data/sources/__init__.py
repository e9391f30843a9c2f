"""Real image sources. Importing the package registers every built-in source with `study.data.sources.registry`."""

from study.data.sources import imagenet, local, shapes, torchvision_datasets  # noqa: F401 - registration side effects
