"""Benchmark the synthetic corpus and the built-in encoder at the demo's setting, and measure learnability.

    python tests/benchmarks/bench_synth.py [--workers 2] [--out DIR] [--calibrate]

In one run:
1. Render the demo-sized corpus (``SynthConfig()``: 40 train + 10 held-out videos, 128x128, 20 fps):
   wall time and CPU time (ffmpeg included). Baseline: on five of its videos in one process, x264
   encoding alone of the same frames (drawn beforehand) against drawing and encoding them.
2. Decode clips inside the labelled segments at the demo setting (10 fps, 64x64, 15 frames), timed;
   the decode rate is the baseline the encoder's throughput is compared with.
3. Encoder throughput in clips/s (best of several passes over all clips).
4. Held-out probes: nearest class mean and logistic regression for verb and noun.
5. Visual words: k-means (scikit-learn) with 12, 48 and 144 clusters on the training clips; the
   held-out accuracy of predicting verb / noun from a clip's word alone (each word's majority label).
6. Learnability from the transcripts: clips cut at the caption timestamps of the training videos
   (as ``shards prepare`` cuts them), words from a 144-word codebook, and a naive Bayes model
   P(word in the sentence | visual word) learned from the captions alone (no labels); scored on the
   held-out labelled segments. This is a floor for what the pretrained model can pick up.

``--calibrate`` prints the encoder's feature centre and scale constants measured on the training clips.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import ffmpeg
import numpy as np
import torch

from videobert.models.visual.synthetic import SyntheticEncoder
from videobert.shards.ffmpeg_bin import ffmpeg_exe
from videobert.shards.synthetic import corpus as synth

FPS, SIZE, CLIP_LEN = 10.0, 64, 15


def decode(path: Path) -> np.ndarray:
    out, _ = (
        ffmpeg.input(str(path)).filter("fps", fps=FPS).filter("scale", SIZE, SIZE)
        .output("pipe:", format="rawvideo", pix_fmt="rgb24").global_args("-loglevel", "error")
        .run(cmd=ffmpeg_exe(), capture_stdout=True)
    )
    return np.frombuffer(out, np.uint8).reshape(-1, SIZE, SIZE, 3)


def cut(frames: np.ndarray, start: float, end: float) -> list[np.ndarray]:
    """Clips of frames k with start <= k / fps < end; a remainder of at least half a clip is padded."""
    first = int(np.ceil(start * FPS - 1e-9))
    stop = min(int(np.ceil(end * FPS - 1e-9)), len(frames))
    clips = [frames[k:k + CLIP_LEN] for k in range(first, stop - CLIP_LEN + 1, CLIP_LEN)]
    rest = (stop - first) % CLIP_LEN if stop > first else 0
    if rest * 2 >= CLIP_LEN:
        tail = frames[stop - rest:stop]
        clips.append(np.concatenate([tail, np.repeat(tail[-1:], CLIP_LEN - rest, axis=0)]))
    return clips


def encode_only_fps(plans: list[synth.VideoPlan], config: synth.SynthConfig) -> tuple[float, float]:
    """Frames/s of (rendering and encoding, x264 encoding alone) of the same videos, one process."""
    frames = [np.concatenate(list(synth.iter_frames(p, config.size, config.fps))) for p in plans]
    total = sum(len(f) for f in frames)
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        for plan in plans:
            synth.render_video(plan, Path(scratch) / "video.mp4", config)
        rendered = total / (time.perf_counter() - started)
        started = time.perf_counter()
        for video in frames:
            process = synth.start_encoder(Path(scratch) / "bare.mp4", config)
            process.communicate(video.tobytes())
        return rendered, total / (time.perf_counter() - started)


def bench_render(out: Path, workers: int) -> synth.CorpusInfo:
    config = synth.SynthConfig()
    cpu = _cpu_seconds()
    started = time.perf_counter()
    info = synth.render_corpus(out, config, workers=workers, overwrite=True, progress=False)
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    plans = synth.plan_corpus(config)
    frames = sum(synth.frame_count(p, config.fps) for p in plans)
    video_s = sum(info.seconds.values())
    print(f"render: {len(plans)} videos, {video_s / 60:.1f} min of video, {frames} frames in {seconds:.1f} s "
          f"with {workers} workers: {frames / seconds:.0f} frames/s, {video_s / seconds:.0f}x realtime; "
          f"{cpu:.1f} CPU-s in all ({cpu / frames * 1000:.2f} ms per frame, ffmpeg included)")
    rendered, bare = encode_only_fps(plans[:5], config)
    print(f"  one process, 5 videos: render + encode {rendered:.0f} frames/s; x264 alone on the same frames "
          f"{bare:.0f} frames/s; ratio {rendered / bare:.2f}")
    return info


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the ffmpeg encoders)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def labelled(info: synth.CorpusInfo, split: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Clips inside the labelled segments, with their verb, noun and segment number."""
    database = json.loads(info.annotations(split).read_text())["database"]
    clips, labels = [], {"verb": [], "noun": [], "segment": []}
    for video_id, entry in database.items():
        frames = decode(info.video_path(split, video_id))
        for a in entry["annotations"]:
            for clip in cut(frames, *a["segment"]):
                clips.append(clip)
                labels["verb"].append(a["verb"])
                labels["noun"].append(a["noun"])
                labels["segment"].append(f"{video_id}/{a['id']}")
    return np.stack(clips), {k: np.array(v) for k, v in labels.items()}


def bench_encoder(clips: np.ndarray, decode_rate: float, device: str) -> None:
    """Best of five passes over all clips: wall-clock rate, and the rate per CPU-second used."""
    encoder = SyntheticEncoder().to(device)
    batch = torch.from_numpy(clips).to(device)
    wall, cpu = float("inf"), float("inf")
    for _ in range(5):
        started, cpu_started = time.perf_counter(), time.process_time()
        encoder(batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall, cpu = min(wall, time.perf_counter() - started), min(cpu, time.process_time() - cpu_started)
    rate = len(clips) / wall
    print(f"encoder on {device} ({torch.get_num_threads()} threads): {rate:.0f} clips/s wall, "
          f"{len(clips) / cpu:.0f} clips per CPU-second (decode at the demo setting: {decode_rate:.0f} clips/s; "
          f"encoder / decode = {rate / decode_rate:.1f})")


def nearest_class_mean(x_train, y_train, x_test) -> np.ndarray:
    classes = np.unique(y_train)
    means = np.stack([x_train[y_train == c].mean(axis=0) for c in classes])
    return classes[((x_test[:, None] - means[None]) ** 2).sum(-1).argmin(axis=1)]


def bench_probes(x_train, x_test, labels_train, labels_test) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    for name in ("verb", "noun"):
        y_train, y_test = labels_train[name], labels_test[name]
        ncm = (nearest_class_mean(x_train, y_train, x_test) == y_test).mean()
        logistic = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(x_train, y_train)
        chance = 1 / len(np.unique(y_train))
        print(f"probe {name}: held-out accuracy nearest-class-mean {ncm:.3f}, logistic {logistic.score(x_test, y_test):.3f} "
              f"(chance {chance:.3f}; {len(x_train)} train / {len(x_test)} held-out clips)")


def word_accuracy(words_train, y_train, words_test, y_test) -> float:
    """Held-out accuracy of predicting a label from the visual word alone (each word's majority label)."""
    majority = {}
    for word in np.unique(words_train):
        values, counts = np.unique(y_train[words_train == word], return_counts=True)
        majority[word] = values[counts.argmax()]
    return float(np.mean([majority.get(w) == y for w, y in zip(words_test, y_test)]))


def bench_visual_words(x_train, x_test, labels_train, labels_test) -> None:
    from sklearn.cluster import KMeans

    for k in (12, 48, 144):
        kmeans = KMeans(k, n_init=3, random_state=0).fit(x_train)
        words_train, words_test = kmeans.labels_, kmeans.predict(x_test)
        verb = word_accuracy(words_train, labels_train["verb"], words_test, labels_test["verb"])
        noun = word_accuracy(words_train, labels_train["noun"], words_test, labels_test["noun"])
        print(f"visual words k={k:3d}: held-out verb from the word alone {verb:.3f}, noun {noun:.3f}")


def bench_learnability(info: synth.CorpusInfo, encoder: SyntheticEncoder, x_test, labels_test) -> None:
    from sklearn.cluster import KMeans

    captions = json.loads(info.captions("train").read_text())
    samples = []
    for video_id, entry in captions.items():
        frames = decode(info.video_path("train", video_id))
        for start, end, text in zip(entry["start"], entry["end"], entry["text"]):
            clips = cut(frames, start, end)
            if clips:
                samples.append((text.split(), encoder(torch.from_numpy(np.stack(clips))).numpy()))
    kmeans = KMeans(144, n_init=3, random_state=0).fit(np.concatenate([f for _, f in samples]))
    words_test = kmeans.predict(x_test)
    for name, vocabulary in (("verb", info.verbs), ("noun", info.nouns)):
        counts = np.full((144, len(vocabulary)), 0.1)
        for text, features in samples:
            for j, label in enumerate(vocabulary):
                if label in text:
                    np.add.at(counts[:, j], kmeans.predict(features), 1)
        log_p = np.log(counts / counts.sum(axis=1, keepdims=True))
        # One held-out labelled segment at a time: sum the log-probabilities over its clips.
        right, total = 0, 0
        for key in np.unique(labels_test["segment"]):
            rows = labels_test["segment"] == key
            guess = vocabulary[int(log_p[words_test[rows]].sum(axis=0).argmax())]
            right += guess == labels_test[name][rows][0]
            total += 1
        print(f"learnability {name}: caption-trained naive Bayes on 144 visual words, held-out segment accuracy "
              f"{right / total:.3f} (chance {1 / len(vocabulary):.3f}; {len(samples)} caption samples, {total} segments)")


def print_calibration(raw: torch.Tensor) -> None:
    def fmt(values: torch.Tensor) -> str:
        return ", ".join(f"{v:.4g}" for v in values.tolist())

    print("_CENTRE =", fmt(raw.mean(dim=0)))
    print("_SCALE =", fmt(raw.std(dim=0, unbiased=False)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="corpus folder (default: a temporary one)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--calibrate", action="store_true", help="print the encoder's feature constants")
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work slows every figure)")
    with tempfile.TemporaryDirectory() as scratch:
        info = bench_render(Path(args.out or scratch) / "corpus", args.workers)
        started = time.perf_counter()
        sets = {split: labelled(info, split) for split in synth.SPLITS}
        decode_rate = sum(len(s[0]) for s in sets.values()) / (time.perf_counter() - started)
        clips = np.concatenate([s[0] for s in sets.values()])
        bench_encoder(clips, decode_rate, "cpu")
        if args.device != "cpu":
            bench_encoder(clips, decode_rate, args.device)
        encoder = SyntheticEncoder()
        if args.calibrate:
            print_calibration(encoder.raw_features(torch.from_numpy(sets["train"][0])))
        x_train, x_test = (encoder(torch.from_numpy(sets[s][0])).numpy() for s in synth.SPLITS)
        labels_train, labels_test = (sets[s][1] for s in synth.SPLITS)
        bench_probes(x_train, x_test, labels_train, labels_test)
        bench_visual_words(x_train, x_test, labels_train, labels_test)
        bench_learnability(info, encoder, x_test, labels_test)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
