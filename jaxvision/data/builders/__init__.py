"""Offline tfds builders; importing this module registers them with tfds."""

from jaxvision.data.builders.digits import Digits
from jaxvision.data.builders.mnist5k import Mnist5k
from jaxvision.data.builders.shapes import Shapes, ShapesConfig

__all__ = ["Digits", "Mnist5k", "Shapes", "ShapesConfig"]
