"""KerasHub, imported under its current or its former (KerasNLP) name."""

try:
    import keras_hub as hub
except ImportError:  # KerasNLP is the former name of the same package.
    import keras_nlp as hub

try:
    from keras_hub.src.utils.pipeline_model import PipelineModel
except ImportError:
    from keras_nlp.src.utils.pipeline_model import PipelineModel

Backbone = hub.models.Backbone
Task = hub.models.Task

__all__ = ["Backbone", "PipelineModel", "Task", "hub"]
