"""Datasets: synthetic mixtures, bundled digits, mnist1d, and MNIST/CIFAR-10 from their files."""

from .datasets import Dataset, load_dataset
from .files import DatasetFilesMissing
from .separability import Separability, check_separable

__all__ = ["Dataset", "DatasetFilesMissing", "Separability", "check_separable", "load_dataset"]
