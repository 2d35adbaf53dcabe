"""The tiny preset on the evaluation corpus (``eval_corpus``), trained for real or left as initialised,
and written as an exported transformers directory: the models of the captioning, retrieval,
masked-video and export tests.

Training goes through the real data stream, example builder and model, in this process, on one
thread. As in ``test_evaluate``, the video-token loss is off and the alignment loss small: in runs
this short both pull the tied rows of the visual words towards each other, and the masked text never
learns to read the video.
"""

from __future__ import annotations

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "launch" / "recipes" / "debug.yaml"
TRAINING = [
    "model.init=", "model.preset=tiny", "data.text_model=minilm", "data.max_seq_len=32", "optim.lr=3e-3",
    "optim.warmup_steps=10", "optim.micro_batch_size=32", "objectives.text_mask_prob=0.5",
    "objectives.video_mlm_weight=0", "objectives.alignment_weight=0.1", "objectives.max_stride=1",
    "objectives.concat_prob=0", "objectives.joint_fraction=0.8", "objectives.text_fraction=0.1",
    "objectives.video_fraction=0.1",
]


def run_config(corpus: dict, steps: int, extra: tuple[str, ...] = ()):
    from videobert.trainer.config import load_config

    return load_config(RECIPE, [f"data.train={corpus['train']}", f"data.heldout={corpus['heldout']}",
                                f"data.codebook={corpus['codebook']}", f"max_steps={steps}", *TRAINING, *extra])


def exported_tiny(corpus: dict, out: Path, steps: int, seed: int = 0, extra: tuple[str, ...] = ()) -> Path:
    """The tiny preset trained ``steps`` steps (0: as initialised) on the corpus, exported to ``out``."""
    from videobert.models.videobert import MODEL_INPUTS, VideoBertForPreTraining
    from videobert.models.visual.codebook import Codebook
    from videobert.models.vocab import JointVocab
    from videobert.trainer import build
    from videobert.trainer.data import BatchStream, StreamPosition
    from videobert.trainer.distributed import DistInfo
    from videobert.trainer.example_builder import ExampleBuilder
    from videobert.trainer.export import write_export

    torch.manual_seed(seed)
    cfg = run_config(corpus, max(steps, 1), extra)
    codebook = Codebook.load(corpus["codebook"])
    tokenizer = build.build_tokenizer(cfg)
    vocab = JointVocab.from_tokenizer(tokenizer, codebook.num_leaves)
    model = VideoBertForPreTraining(build.build_model_config(cfg, vocab))
    if steps:
        builder = ExampleBuilder(vocab, tokenizer, cfg.objectives, cfg.data.max_seq_len)
        one = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
        spec = build.stream_spec(cfg, tuple(build.inspect_source(cfg.data.train, "train").urls), one)
        batches = iter(BatchStream(spec, StreamPosition(), builder.build, cfg.optim.micro_batch_size))
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        model.train()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for _ in range(steps):
                batch = next(batches)
                loss = model(**{k: torch.as_tensor(batch[k]) for k in MODEL_INPUTS}).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        finally:
            torch.set_num_threads(threads)
    return write_export(model.eval(), tokenizer, cfg, out, step=steps, checkpoint=None, codebook_hash=codebook.hash)
