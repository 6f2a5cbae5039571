"""Feature-tagged `tf.data` pipelines: tagging, mixtures, per-cell splits."""
