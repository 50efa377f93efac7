"""sr-batch: neural super-resolution for image archives on Ray."""

__version__ = "0.1.0"
