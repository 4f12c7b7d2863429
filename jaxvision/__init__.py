"""jaxvision: a JAX/Flax research codebase for image recognition."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """Lazy `jaxvision.Predictor`: `import jaxvision` stays light (no JAX/TF import)."""
    if name == "Predictor":
        from jaxvision.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'jaxvision' has no attribute {name!r}")
