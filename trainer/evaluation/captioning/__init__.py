"""Captioning from frozen VideoBERT features (the paper's Table 3), and linear probes on the same features.

- ``command``: the ``videobert caption`` command: rows, pictures and the table;
- ``config``: its configuration (``CaptionConfig``);
- ``features``: the frozen features of labelled segments (VideoBERT's and the clip encoder's);
- ``captioner``: the small transformer encoder-decoder trained on those features;
- ``training``: the captioner's training loop (deterministic batches, checkpoints that resume exactly);
- ``metrics``: BLEU, METEOR, ROUGE-L and CIDEr as YouCook2 states them;
- ``probes``: logistic-regression probes of the verb and the noun.
"""
