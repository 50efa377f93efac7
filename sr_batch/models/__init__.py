"""Model zoo: Keras architectures, the registry of shipped weights, and training.

Importing this package stays TensorFlow-free (the Ray driver imports the
registry); `layers` and `architectures` import Keras when they are imported.
"""
