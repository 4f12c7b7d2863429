"""jaxvision: a JAX/Flax research codebase for image recognition."""

__version__ = "0.1.0"
