"""recsys_core: the library behind the batch recommender platform."""

__version__ = "0.1.0"
