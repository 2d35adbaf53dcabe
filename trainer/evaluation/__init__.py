"""Evaluation and export of a pretrained VideoBERT: a program of its own beside training.

- ``evaluate``: the ``videobert eval`` command, its config and its jobs;
- ``load``: the model to evaluate, from a run folder, a checkpoint or an exported directory;
- ``zeroshot``: the paper's zero-shot action classification; ``labels``: the label files it reads;
- ``heldout``: alignment and masked-token metrics on held-out shards (also run at the end of training);
- ``generate``: text-to-video and video-to-text, with their pictures;
- ``report``: ``report.md``, ``results.json`` and the plots;
- ``export``: a checkpoint as a transformers ``BertForPreTraining`` directory.
"""
