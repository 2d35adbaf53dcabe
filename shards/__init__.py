"""From raw videos and transcripts to WebDataset shards: reading transcripts, decoding with ffmpeg,
cutting clips, writing and reading shards, the synthetic corpus, the tokenize stage and inspection.

The shard layout is defined once, in ``shards.schema``.
"""
