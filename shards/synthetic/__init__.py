"""The built-in synthetic corpus (``videobert shards synth``): instructional-style videos rendered with
ffmpeg, their speech-like transcripts, and YouCook2-form labels. Not a production stage: it is what the
demo, the tests and the benchmarks run on.

- ``corpus``: the stage: plans the corpus, renders the videos, writes transcripts, annotations and labels;
- ``scene``: what a frame shows (objects, actions, backgrounds) and how it is drawn;
- ``speech``: the spoken sentences and their timing;
- ``describe``: one descriptive sentence per annotated segment (the captioning references).
"""
