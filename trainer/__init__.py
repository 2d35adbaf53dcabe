"""The training run: configuration, the WebDataset data pipeline, the VideoBERT example builder, the
DeepSpeed engine, checkpoints, metrics, evaluation and the ``videobert`` command line."""
