"""The synthetic corpus's reference sentences: what the renderer knows, in six or more words, varied."""

from __future__ import annotations

from collections import Counter

from videobert.shards.synthetic import corpus as synth
from videobert.shards.synthetic import describe as synth_describe
from videobert.shards.synthetic import scene as synth_scene
from videobert.trainer.evaluation.labels import LabelVocabulary, words_of_sentence

PLANS = synth.plan_corpus(synth.SynthConfig(train_videos=40, heldout_videos=10))


def _segments():
    for plan in PLANS:
        for segment, sentence in zip(plan.segments, synth.described(plan)):
            yield plan, segment.action, sentence


def test_every_sentence_says_what_the_segment_shows():
    vocabulary = LabelVocabulary(verbs=tuple(synth_scene.VERBS), nouns=tuple(synth_scene.NOUNS))
    for plan, action, sentence in _segments():
        words = sentence.split()
        assert len(words) >= 6, sentence
        assert synth_scene.NOUNS[action.noun][1] in words, sentence  # the object's colour
        assert words_of_sentence(sentence, vocabulary) == (action.verb, action.noun), sentence
        speed = {w for w in words if w in synth_describe.FAST + synth_describe.SLOW}
        assert speed <= set(synth_describe.FAST if synth_describe._is_fast(action) else synth_describe.SLOW), sentence
        if "left" in words and action.verb != "roll":
            assert action.centre[0] < 0.5, sentence
        if "surface" in words:  # the background named: "on a striped charcoal surface"
            assert f"{synth_describe.BACKGROUND_NAMES[plan.background.palette]} surface" in sentence, sentence


def test_phrasing_varies_and_follows_from_the_seed():
    sentences = [s for _, _, s in _segments()]
    assert len(set(sentences)) > 0.8 * len(sentences)
    openings = Counter(" ".join(s.split()[:1]) for s in sentences)
    assert len(openings) >= 8  # the verb first, "now", "slowly", "on the ...", ...
    assert [synth.described(p) for p in PLANS[:5]] == [synth.described(p) for p in PLANS[:5]]
    assert len(synth_describe.BACKGROUND_NAMES) == len(synth_scene.BACKGROUNDS)


def test_the_annotations_and_labels_carry_the_sentences():
    annotations = synth.annotations_json(PLANS[:2])["database"]
    rows = synth.label_rows(PLANS[:2])
    sentences = [a["sentence"] for entry in annotations.values() for a in entry["annotations"]]
    assert sentences == [r["sentence"] for r in rows] == [s for p in PLANS[:2] for s in synth.described(p)]
