"""Parity with transformers' BERT on the packaged MiniLM, import details, and export that loads back."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertForPreTraining, BertTokenizerFast

from videobert.models.hf_interop import (
    bert_key_table, export_pretrained, from_pretrained_bert, normalize_bert_keys, videobert_to_bert_state,
)
from videobert.models.vocab import IGNORE_INDEX, VIDEO_SEP_TOKEN

SENTENCES = [
    "now let me show you how to cut the onion",
    "add the butter to the hot pan and stir until it melts completely",
    "season with salt",
]


@pytest.fixture(scope="module")
def ours(minilm_dir, minilm_vocab):
    torch.manual_seed(0)
    return from_pretrained_bert(minilm_dir, minilm_vocab).eval()


@pytest.fixture(scope="module")
def theirs(minilm_dir):
    return BertForPreTraining.from_pretrained(minilm_dir).eval()


@pytest.fixture(scope="module")
def with_heads(complete_bert_dir, minilm_vocab):
    """Ours and transformers' model, both from a directory that has the MLM and next-sentence heads
    (at transformers' initial values: judged never trained, but kept as loaded)."""
    ours = from_pretrained_bert(complete_bert_dir, minilm_vocab).eval()
    return ours, BertForPreTraining.from_pretrained(complete_bert_dir).eval()


def _text_batch(tokenizer, pair: bool):
    if pair:  # sentence pairs: token type 1 on the second segment, padding on the shorter rows
        enc = tokenizer(SENTENCES, SENTENCES[::-1], padding=True, return_tensors="pt")
    else:
        enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["token_type_ids"], enc["attention_mask"]


@pytest.mark.parametrize("pair", [False, True])
def test_encoder_matches_transformers_with_padding(ours, theirs, minilm_tokenizer, pair):
    ids, types, mask = _text_batch(minilm_tokenizer, pair)
    assert int(mask.sum()) < mask.numel()  # some rows really are padded
    with torch.no_grad():
        a = ours.encode(ids, types, mask)
        b = theirs.bert(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], rtol=0, atol=1e-5)


def test_encoder_matches_transformers_without_padding(ours, theirs, minilm_tokenizer):
    enc = minilm_tokenizer([SENTENCES[1]] * 2, SENTENCES[:2], padding=True, return_tensors="pt")
    ids = enc["input_ids"][:1]  # one row: nothing to pad
    with torch.no_grad():
        a = ours.encode(ids, enc["token_type_ids"][:1], None)
        b = theirs.bert(input_ids=ids, token_type_ids=enc["token_type_ids"][:1]).last_hidden_state
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_heads_match_transformers_once_the_directory_has_them(with_heads, minilm_vocab, minilm_tokenizer):
    model, reference = with_heads
    ids, types, mask = _text_batch(minilm_tokenizer, pair=True)
    with torch.no_grad():
        hidden = model.encode(ids, types, mask)
        real = mask.bool()
        mlm = model.mlm_logits(hidden[real])
        out = reference(input_ids=ids, token_type_ids=types, attention_mask=mask)
        align = model.alignment_logits(hidden)
    text_rows = minilm_vocab.text_vocab_size
    torch.testing.assert_close(mlm[:, :text_rows], out.prediction_logits[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(align, out.seq_relationship_logits, rtol=0, atol=1e-5)


def test_every_pretrained_weight_is_kept(ours, minilm_dir, minilm_vocab):
    source = normalize_bert_keys(load_file(minilm_dir / "model.safetensors"))
    exported = videobert_to_bert_state(ours.state_dict(), ours.config)
    placed = [k for k in source if k in exported]
    assert len(placed) == len(source) - 1  # all but the position_ids buffer
    for key in placed:  # the never-trained pooler included: counted as new, kept as loaded
        mine = exported[key]
        if key == "bert.embeddings.word_embeddings.weight":
            mine = mine[: minilm_vocab.text_vocab_size]
        assert torch.equal(mine, source[key]), key


def test_new_word_rows_follow_the_pretrained_rows(ours, minilm_vocab):
    table = ours.embeddings.word.weight.detach()
    old, new = table[: minilm_vocab.text_vocab_size], table[minilm_vocab.text_vocab_size:]
    assert new.shape[0] == minilm_vocab.size_padded - minilm_vocab.text_vocab_size
    assert float((new.mean(0) - old.mean(0)).abs().mean()) < 0.25 * float(old.std(0).mean())
    assert abs(float(new.std(0).mean()) / float(old.std(0).mean()) - 1.0) < 0.1
    assert float(torch.cdist(new[:50], new[:50]).triu(1).max()) > 0  # distinct rows, not one shared vector


def test_absent_heads_are_initialised_and_logged(minilm_dir, minilm_vocab, caplog):
    with caplog.at_level(logging.INFO, logger="videobert.models.hf_interop"):
        model = from_pretrained_bert(minilm_dir, minilm_vocab, hidden_dropout_prob=0.0)
    absent = [r.getMessage() for r in caplog.records if "has no weights for" in r.getMessage()]
    assert len(absent) == 1 and "mlm_head.dense.weight" in absent[0]
    assert "alignment_head.classifier.weight" in absent[0]
    assert "alignment_head.pooler" not in absent[0]  # MiniLM ships a pooler (judged never trained: logged apart)
    assert "alignment_head.pooler.weight, alignment_head.pooler.bias judged never trained (bias all zero" in caplog.text
    weight = model.mlm_head.dense.weight.detach()
    assert abs(float(weight.std()) - model.config.initializer_range) < 0.002
    assert float(model.mlm_head.decoder.bias.detach().abs().max()) == 0.0
    assert model.config.hidden_dropout_prob == 0.0


def test_key_table_covers_both_models(ours, complete_bert_dir):
    table = bert_key_table(ours.config.num_hidden_layers)
    mine = {k for k, _ in table}
    assert mine == set(ours.state_dict()) - {"mlm_head.decoder.weight"}
    hf_names = set(load_file(complete_bert_dir / "model.safetensors"))
    assert {name for _, names in table for name in names} == hf_names


def test_export_loads_in_transformers_and_matches(ours, minilm_vocab, minilm_tokenizer, make_joint_batch, tmp_path):
    with torch.no_grad():  # make the heads non-trivial, as after training
        ours.mlm_head.decoder.bias.normal_(0.0, 0.5)
    out = export_pretrained(ours, tmp_path / "export", minilm_tokenizer)
    loaded, info = BertForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert loaded.config.vocab_size == minilm_vocab.size_padded
    ids, types, mask = make_joint_batch(minilm_vocab)  # joint sequences with visual words
    mask[1, -4:] = 0
    with torch.no_grad():
        hidden = ours.encode(ids, types, mask)
        real = mask.bool()
        reference = loaded.eval()(input_ids=ids, token_type_ids=types, attention_mask=mask)
        torch.testing.assert_close(ours.mlm_logits(hidden[real]), reference.prediction_logits[real], rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.alignment_logits(hidden), reference.seq_relationship_logits, rtol=0, atol=1e-5)


def test_exported_tokenizer_knows_the_joint_vocabulary(ours, minilm_vocab, minilm_tokenizer, tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "tokenizer.json").write_text("{}")  # a stale file from an earlier export
    out = export_pretrained(ours, tmp_path / "export", minilm_tokenizer)
    lines = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == minilm_vocab.size_padded and lines[minilm_vocab.video_sep_id] == VIDEO_SEP_TOKEN
    assert lines[: minilm_vocab.text_vocab_size] == (minilm_tokenizer.convert_ids_to_tokens(list(range(30522))))
    tokenizer = BertTokenizerFast.from_pretrained(out)
    assert len(tokenizer) == minilm_vocab.size_padded
    assert VIDEO_SEP_TOKEN in tokenizer.all_special_tokens
    ids = tokenizer("cut the onion [>]")["input_ids"]
    assert ids[-2:] == [minilm_vocab.video_sep_id, minilm_vocab.sep_id]
    assert ids[:-2] == minilm_tokenizer("cut the onion")["input_ids"][:-1]
    assert tokenizer.convert_ids_to_tokens(int(minilm_vocab.visual_to_joint(42))) == "[V00042]"


def test_export_reloads_into_videobert(ours, minilm_vocab, minilm_tokenizer, tmp_path):
    out = export_pretrained(ours, tmp_path / "export", minilm_tokenizer)
    again = from_pretrained_bert(out, minilm_vocab)
    theirs_state, mine_state = again.state_dict(), ours.state_dict()
    assert theirs_state.keys() == mine_state.keys()
    assert all(torch.equal(theirs_state[k], mine_state[k]) for k in mine_state)
    # ours was never trained: its heads, still at their initial values, count as new again (kept as they are)
    judged = again.new_parameter_names
    assert {"alignment_head.pooler.weight", "mlm_head.dense.weight", "mlm_head.norm.bias"} <= set(judged)
    assert all(name.startswith(("alignment_head.", "mlm_head.")) for name in judged)
    assert from_pretrained_bert(out, minilm_vocab, untrained_as_new=False).new_parameter_names == ()


def _write_bert_dir(minilm_dir, out, **replace):
    """A copy of the packaged MiniLM (config and weights) with the tensors ``replace`` names swapped."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(minilm_dir / "config.json", out / "config.json")
    state = load_file(minilm_dir / "model.safetensors")
    state.update({k.replace("__", "."): v.contiguous() for k, v in replace.items()})
    save_file(state, out / "model.safetensors")
    return out


def test_the_minilm_pooler_is_judged_never_trained(ours, minilm_dir, minilm_vocab):
    """MiniLM was trained through mean pooling: its pooler is a zero bias and a (decayed) normal draw."""
    new = set(ours.new_parameter_names)
    assert {"alignment_head.pooler.weight", "alignment_head.pooler.bias"} <= new
    body = [name for name, _ in ours.named_parameters() if name.startswith(("embeddings.", "encoder."))]
    assert body and not new & set(body)
    source = load_file(minilm_dir / "model.safetensors")
    assert torch.equal(ours.alignment_head.pooler.weight.detach(), source["pooler.dense.weight"])  # kept as loaded
    off = from_pretrained_bert(minilm_dir, minilm_vocab, untrained_as_new=False)
    assert not {n for n in off.new_parameter_names if n.startswith("alignment_head.pooler")}


@pytest.mark.parametrize("change", ["bias", "weight"])
def test_a_trained_looking_pooler_is_kept(minilm_dir, minilm_vocab, tmp_path, change):
    source = load_file(minilm_dir / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    if change == "bias":  # the same draw, but a bias that moved
        replace = {"pooler__dense__bias": 1e-3 * torch.randn(384, generator=g)}
    else:  # a zero bias, but a weight with a trained matrix's statistics
        replace = {"pooler__dense__weight": source["encoder.layer.0.attention.output.dense.weight"].clone()}
    bert_dir = _write_bert_dir(minilm_dir, tmp_path / "bert", **replace)
    model = from_pretrained_bert(bert_dir, minilm_vocab)
    assert not {n for n in model.new_parameter_names if n.startswith("alignment_head.pooler")}
    expected = replace.popitem()[1]
    mine = model.alignment_head.pooler.bias if change == "bias" else model.alignment_head.pooler.weight
    assert torch.equal(mine.detach(), expected)


def test_a_layer_norm_at_its_initial_values_is_new(minilm_dir, minilm_vocab, tmp_path, caplog):
    bert_dir = _write_bert_dir(minilm_dir, tmp_path / "bert", embeddings__LayerNorm__weight=torch.ones(384),
                               embeddings__LayerNorm__bias=torch.zeros(384))
    with caplog.at_level(logging.INFO, logger="videobert.models.hf_interop"):
        model = from_pretrained_bert(bert_dir, minilm_vocab)
    assert {"embeddings.norm.weight", "embeddings.norm.bias"} <= set(model.new_parameter_names)
    assert not [n for n in model.new_parameter_names if n.startswith("encoder.")]
    why = "embeddings.norm.weight, embeddings.norm.bias judged never trained (weight all ones and bias all zeros)"
    assert why in caplog.text


def test_pytorch_model_bin_directory(minilm_dir, minilm_vocab, ours, tmp_path):
    shutil.copy(minilm_dir / "config.json", tmp_path / "config.json")
    torch.save(load_file(minilm_dir / "model.safetensors"), tmp_path / "pytorch_model.bin")
    torch.manual_seed(0)  # the same draw of new rows as the fixture
    model = from_pretrained_bert(tmp_path, minilm_vocab)
    assert torch.equal(model.embeddings.word.weight, ours.embeddings.word.weight)
    assert torch.equal(model.encoder.layers[5].ffn_out.weight, ours.encoder.layers[5].ffn_out.weight)


def test_refuses_what_it_cannot_keep(minilm_dir, minilm_vocab, tmp_path):
    shutil.copy(minilm_dir / "config.json", tmp_path / "config.json")
    state = load_file(minilm_dir / "model.safetensors")
    state["classifier.weight"] = torch.zeros(3, 384)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="no place in VideoBERT: \\['classifier.weight'\\]"):
        from_pretrained_bert(tmp_path, minilm_vocab)
    with pytest.raises(ValueError, match="cannot be overridden"):
        from_pretrained_bert(minilm_dir, minilm_vocab, hidden_size=128)
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        from_pretrained_bert(tmp_path, minilm_vocab)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vocab_size"] == minilm_vocab.text_vocab_size


def test_alignment_class_zero_is_berts_is_next(with_heads, minilm_tokenizer):
    """Class 0 = aligned maps onto BERT's label 0 = "is next": transformers' own next-sentence loss
    (its total loss minus its MLM part) equals our alignment loss for the same labels."""
    model, reference = with_heads
    ids, types, mask = _text_batch(minilm_tokenizer, pair=True)
    labels = torch.tensor([0, 1, 0])
    mlm = torch.full_like(ids, IGNORE_INDEX)
    mlm[:, 1] = ids[:, 1]
    with torch.no_grad():
        ours_loss = model(ids, types, mask, None, labels).alignment_loss
        ref = reference(input_ids=ids, token_type_ids=types, attention_mask=mask,
                        labels=mlm, next_sentence_label=labels)
    ref_mlm = torch.nn.functional.cross_entropy(ref.prediction_logits.flatten(0, 1), mlm.flatten())
    torch.testing.assert_close(ours_loss, ref.loss - ref_mlm, rtol=0, atol=1e-5)
    assert float(ours_loss) > 0


def test_a_pair_head_travels_through_an_export(minilm_dir, minilm_vocab, minilm_tokenizer, tmp_path):
    model = from_pretrained_bert(minilm_dir, minilm_vocab, alignment_head="pair")
    assert "alignment_head.pair" in model.new_parameter_names  # BERT has no such matrix
    with torch.no_grad():
        model.alignment_head.pair.normal_()
    out = export_pretrained(model, tmp_path / "export", minilm_tokenizer)
    assert json.loads((out / "config.json").read_text())["videobert_alignment_head"] == "pair"
    again = from_pretrained_bert(out, minilm_vocab)  # the head comes from config.json
    assert again.config.alignment_head == "pair"
    assert torch.equal(again.alignment_head.pair, model.alignment_head.pair)
    assert "alignment_head.pair" not in from_pretrained_bert(out, minilm_vocab, untrained_as_new=False).new_parameter_names
    with pytest.raises(ValueError, match="set alignment_head='pair'"):
        from_pretrained_bert(out, minilm_vocab, alignment_head="cls")
