"""``videobert shards inspect``: schema, counts, one sample, and the PNG grid of its clips."""

from __future__ import annotations

import io
import shutil
import tarfile

import numpy as np
from PIL import Image

from videobert.shards import inspect_shards as shard_inspect
from videobert.shards import schema
from videobert.shards.writer import ShardWriter
from videobert.trainer import cli


def test_clip_shards_schema_counts_and_sample(prepared, capsys):
    assert cli.main(["shards", "inspect", str(prepared), "--sample", "1"]) == 0
    out = capsys.readouterr().out
    assert "kind clips, format version 1" in out
    assert "<key>.frames.npy    uint8 (n_clips, clip_len=5, height=32, width=32, 3) RGB" in out
    assert "counts (stats files): 3 shards, 6 samples, 15 clips" in out
    assert "sample alpha-s00001:" in out and "text: second step" in out
    assert '"padded_frames": 2' in out and "frames.npy: uint8 (3, 5, 32, 32, 3)" in out


def test_frames_png_shows_each_clip_in_order(prepared, tmp_path, capsys, media):
    png = tmp_path / "grid.png"
    assert cli.main(["shards", "inspect", str(prepared), "--key", "alpha-s00001", "--frames", str(png)]) == 0
    assert f"frames saved to {png}" in capsys.readouterr().out
    image = np.asarray(Image.open(png).convert("RGB"))
    rows, per_row, step = 3, 5, shard_inspect.THUMB_HEIGHT + shard_inspect._MARGIN
    top = image.shape[0] - rows * step  # the caption is drawn above the rows
    assert top > 0 and image.shape[1] == shard_inspect._LABEL_WIDTH + per_row * step + shard_inspect._MARGIN
    # Sample alpha-s00001 starts at frame 10 (10 fps) and has 13 frames + 2 repeated: 3 clips of 5.
    source = [2 * (10 + min(i, 12)) for i in range(15)]
    for row in range(rows):
        for column in range(per_row):
            y = top + row * step + shard_inspect.THUMB_HEIGHT // 2
            x = shard_inspect._LABEL_WIDTH + column * step + shard_inspect.THUMB_HEIGHT // 2
            assert media.levels(image[y : y + 1, x : x + 1][None]) == [source[row * per_row + column]]


def test_token_shards_have_no_frames_to_draw(tmp_path, capsys):
    meta = schema.SampleMeta(
        video_id="v", segment_index=0, start=0.0, end=3.0, fps=10.0, clip_len=15, frame_size=(64, 64),
        n_clips=2, first_frame=0, source="caption.json (howto100m)", kind=schema.TOKEN_KIND, codebook_hash="c0ffee",
    )
    sample = schema.Sample(key="v-s00000", text="stir the soup", meta=meta, tokens=np.array([17, 20735], np.int32))
    with ShardWriter(tmp_path / "tokens") as writer:
        writer.write(sample, (0, 0))
    png = tmp_path / "none.png"
    assert cli.main(["shards", "inspect", str(tmp_path / "tokens"), "--frames", str(png)]) == 0
    out = capsys.readouterr().out
    assert "kind tokens" in out and "<key>.tokens.npy    int32 (n_clips,) visual-token ids" in out
    assert "token ids: [   17 20735]" in out and '"codebook_hash": "c0ffee"' in out
    assert "no picture written" in out and not png.exists()


def test_counts_by_reading_when_stats_are_missing(prepared, tmp_path, capsys):
    shutil.copy(prepared / "shard-000001.tar", tmp_path / "loose.tar")
    assert cli.main(["shards", "inspect", str(tmp_path / "loose.tar")]) == 0
    assert "counts (reading the shards): 1 shard, 2 samples, 3 clips" in capsys.readouterr().out


def test_missing_sample_and_bad_path(prepared, tmp_path, capsys):
    assert cli.main(["shards", "inspect", str(prepared), "--key", "nope"]) == 1
    assert "no key 'nope'" in capsys.readouterr().err
    assert cli.main(["shards", "inspect", str(tmp_path / "nothing-here")]) == 2
    assert "no shards found" in capsys.readouterr().err


def _tar_of(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_bad_sample_is_an_error_with_its_key_escaped(tmp_path, capsys):
    """``--sample N`` on a sample that does not decode ends in a message (no traceback), and control
    characters of the shard's key reach the terminal escaped."""
    key = "v\x1b[2J\rforged"
    shard = tmp_path / "bad.tar"
    _tar_of(shard, {f"{key}.json": b"{not json", f"{key}.txt": b"a caption", f"{key}.tokens.npy": b"\x93NUMPY"})
    assert cli.main(["shards", "inspect", str(shard), "--sample", "0"]) == 2
    err = capsys.readouterr().err
    assert "bad.tar:v\\x1b[2J\\x0dforged: key" in err and "is not a sample key" in err, err
    assert "\x1b" not in err and "\r" not in err
    _tar_of(shard, {"ok.json": b"{not json", "ok.txt": b"a caption", "ok.tokens.npy": b"\x93NUMPY"})
    assert cli.main(["shards", "inspect", str(shard), "--sample", "0"]) == 2
    assert "bad.tar:ok: metadata is not valid JSON" in capsys.readouterr().err


def test_link_members_are_reported_as_links(tmp_path, capsys):
    shard = tmp_path / "links.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("a.tokens.npy", b"x"), ("a.txt", b"t"), ("b.txt", b"t"), ("b.tokens.npy", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, kind, target in (("a.json", tarfile.SYMTYPE, "/etc/passwd"), ("b.json", tarfile.LNKTYPE, "a.txt")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    assert cli.main(["shards", "inspect", str(shard), "--sample", "0"]) == 2
    assert "links.tar:a: sample lacks its 'json' or 'txt' field (its member 'a.json' is a symbolic link (to '/etc/passwd'), not a file)" in capsys.readouterr().err
    assert cli.main(["shards", "inspect", str(shard), "--sample", "1"]) == 2
    assert "(its member 'b.json' is a hard link (to 'a.txt'), not a file)" in capsys.readouterr().err
