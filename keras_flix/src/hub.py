"""KerasHub, imported under its current or its former (KerasNLP) name."""

try:
    import keras_hub as hub
except ImportError:  # KerasNLP is the former name of the same package.
    import keras_nlp as hub

Backbone = hub.models.Backbone
Task = hub.models.Task

__all__ = ["Backbone", "Task", "hub"]
