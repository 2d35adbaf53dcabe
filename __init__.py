"""VideoBERT pretraining: ``videobert.shards`` (raw video to shards), ``videobert.models``, ``videobert.trainer``."""

__version__ = "0.1.0"
