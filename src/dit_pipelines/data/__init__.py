from .images import class_names, image_transform, load_image_dataset
from .mnist import load_mnist

__all__ = ["class_names", "image_transform", "load_image_dataset", "load_mnist"]
