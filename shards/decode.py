"""Decoding one video with ffmpeg (through ffmpeg-python) into RGB frames at a fixed rate and size.

One sequential pass per video, streamed through a pipe, one frame at a time:

    ffmpeg -i VIDEO -filter_complex "[0:v:0] fps=FPS:start_time=0:round=up, scale (short side = SIZE),
           crop" -map [out] -f rawvideo -pix_fmt rgb24 pipe:

* Only the first video stream is used (``0:v:0``); audio, subtitles and data streams are ignored.
* Timing: frame ``k`` is the picture on show at ``k / fps`` seconds, i.e. the last source frame whose
  timestamp is at or before ``k / fps`` (``round=up`` rounds source timestamps up to the output
  grid; ffmpeg's default rounds to the nearest tick, which at a rate that does not divide the source's
  shows frames up to half an output frame from the future). Time 0 is the start of the file (its
  earliest stream): a video stream that starts later is padded at the front with its first frame
  (``start_time=0``). Caption times therefore map to frame indices by arithmetic alone
  (see ``shards.clips``).
* Size: scaled so that the short side is ``size`` (aspect ratio kept, storage pixels), then centre
  cropped to ``crop`` = (height, width) (default ``size x size``); ``crop=None`` keeps the whole
  scaled frame, whose size is then read from ffmpeg's report of its output stream.
* ffmpeg's stderr is drained by a thread all along, so a chatty or failing ffmpeg cannot fill the pipe
  and stall; the error lines are kept for the messages below.

Hostile files. A video file is named by the user's folders but made by anyone, so ffmpeg is told to
treat it as a local file and as a video container only: the path goes in as ``file:/absolute/path``
(a name like ``concat:a|b`` or ``subfile:...`` is then just a name), the protocols it may open are
``file`` alone (``-protocol_whitelist``), and the demuxers it may use are the video containers of
``DEMUXERS`` (``-format_whitelist``): a playlist (HLS, ``concat``, ``image2`` sequences...) saved
under a video's name is refused instead of opening the files or URLs it lists. What one video may cost
is bounded too: a decode that produces no frame for ``DecodeOptions.stall_timeout`` seconds is stopped
(kind ``stalled`` when nothing came at all; otherwise its frames so far are used, as for a damaged
file), and no decoded frame exceeds ``DecodeOptions.max_frame_pixels`` before cropping: ffmpeg fits
the scaled frame in a box of that area (``force_original_aspect_ratio=decrease``), which for any
ordinary aspect ratio is the plain short-side scaling, and with ``crop=None`` a video whose scaled
frame would not fit is refused (kind ``too_large``) before any frame is produced.

Bad input raises ``DecodeError`` (``kind`` says which) before any frame is produced: the file is
missing (``missing``), empty (``empty``), has no video stream (``no_video``), is not a video ffmpeg
can read, which includes an mp4 truncated before its index and a playlist (``unreadable``), stalls
(``stalled``) or has frames too large (``too_large``). A file damaged part-way
(e.g. an mp4 truncated in its media data) yields the frames decoded up to the damage and then stops;
``VideoDecoder.damage`` then says what ffmpeg reported. The decoded part is used: those frames were
decoded from intact data, and the caption segments past the damage are handled like segments past
the end of the video.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np

from videobert.models.errors import VideoBertError
from videobert.shards.ffmpeg_bin import ffmpeg_exe

MISSING = "missing"
EMPTY = "empty"
NO_VIDEO = "no_video"
UNREADABLE = "unreadable"
STALLED = "stalled"
TOO_LARGE = "too_large"

DEMUXERS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "flv", "mpegts", "mpeg",
            "mpegvideo", "asf", "ogg", "m4v", "h264", "hevc")
"""The ffmpeg demuxers a video file may be read with (containers of ``shards.transcripts.VIDEO_EXTENSIONS``
and raw streams). Playlists and file lists (hls, dash, concat, image2, ...) are not among them."""

_ERROR_LEVELS = ("[error]", "[fatal]", "[panic]")
_OUTPUT_SIZE = re.compile(r"Video: rawvideo\b.*?, (\d+)x(\d+)[ ,\[]")
_LOG_PREFIXES = re.compile(r"\[[^\]]*@ 0x[0-9a-f]+\] |\[(error|fatal|panic)\] ")  # "[h264 @ 0x55..] [error] "
_PIPE_BYTES = 1 << 20  # larger pipe: fewer wake-ups per frame (Linux only; best effort)


class DecodeError(VideoBertError, RuntimeError):
    """A video that yields no frames; ``kind`` is one of missing, empty, no_video, unreadable."""

    def __init__(self, path: str | Path, kind: str, message: str) -> None:
        super().__init__(message)
        self.path = str(path)
        self.kind = kind


@dataclass(frozen=True, kw_only=True)
class DecodeOptions:
    """Frame rate and geometry of decoded frames."""

    fps: float = 20.0
    """Frames per second sampled from the video (the paper: 20)."""
    size: int = 224
    """Length of the short side after scaling."""
    crop: tuple[int, int] | None = (224, 224)
    """(height, width) of the centre crop after scaling; None keeps the whole scaled frame."""
    max_frame_pixels: int = 3840 * 2160
    """Most pixels of a scaled frame (before the crop): a video of a more extreme aspect ratio than this
    allows is refused with ``crop=None`` (and cannot be cropped as asked otherwise)."""
    stall_timeout: float | None = 60.0
    """Seconds without a new frame after which ffmpeg is stopped; None waits for ever."""
    threads: int = 0
    """ffmpeg's threads for this video's decoder and filters; 0 leaves it to ffmpeg (about one per core).
    Several videos decoded at once on as many cores decode fastest with one thread each: ffmpeg's own
    choice then runs cores x cores threads that wait on each other. The frames are the same bytes
    whatever the number."""

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {self.size}")
        if self.crop is not None and (len(self.crop) != 2 or min(self.crop) < 1):
            raise ValueError(f"crop must be (height, width) in pixels, got {self.crop}")
        smallest = max(self.size * self.size, self.crop[0] * self.crop[1] if self.crop else 0)
        if self.max_frame_pixels < smallest:
            raise ValueError(f"max_frame_pixels must be at least {smallest} (the size and crop asked for), "
                             f"got {self.max_frame_pixels}")
        if self.threads < 0:
            raise ValueError(f"threads must be 0 (ffmpeg's choice) or a positive number, got {self.threads}")
        if self.stall_timeout is not None and not self.stall_timeout > 0:
            raise ValueError(f"stall_timeout must be positive seconds (or None), got {self.stall_timeout}")


def parse_crop(text: str, size: int) -> tuple[int, int] | None:
    """``center`` -> (size, size); ``HxW`` -> (H, W); ``none`` -> None."""
    value = text.strip().lower()
    if value in ("center", "centre"):
        return (size, size)
    if value == "none":
        return None
    match = re.fullmatch(r"(\d+)x(\d+)", value)
    if match is None:
        raise ValueError(f"crop must be 'center', 'none' or HEIGHTxWIDTH (e.g. 224x224), got {text!r}")
    return (int(match.group(1)), int(match.group(2)))


def ffmpeg_command(path: str | Path, options: DecodeOptions, output: str = "pipe:") -> list[str]:
    """The ffmpeg argv that decodes ``path`` to rgb24 frames at ``output`` (also used by the benchmark)."""
    size = options.size
    long = max(size, options.max_frame_pixels // size)  # the bounding box's long side (module doc)
    threads = {"threads": options.threads} if options.threads else {}  # an input option: the decoder's
    stream = (
        ffmpeg.input(f"file:{Path(path).absolute()}", hide_banner=None, nostdin=None, nostats=None, y=None,
                     loglevel="level+info", protocol_whitelist="file", format_whitelist=",".join(DEMUXERS),
                     **threads)["v:0"]
        .filter("fps", fps=options.fps, start_time=0, round="up")
        .filter("scale", w=f"if(gt(iw,ih),{long},{size})", h=f"if(gt(iw,ih),{size},{long})",
                force_original_aspect_ratio="decrease")
    )
    if options.crop is not None:
        height, width = options.crop
        stream = stream.filter("crop", width, height)
    output_stream = stream.output(output, format="rawvideo", pix_fmt="rgb24")
    if options.threads:  # the filter graph's threads (it is compiled as a -filter_complex graph)
        output_stream = output_stream.global_args("-filter_complex_threads", str(options.threads))
    return output_stream.compile(cmd=ffmpeg_exe())


class _StderrDrain(threading.Thread):
    """Reads ffmpeg's stderr to the end, noting its complaints and the output frame size."""

    def __init__(self, stream) -> None:
        super().__init__(daemon=True)
        self._stream = stream
        self.first_error: str | None = None
        """ffmpeg's first complaint: it names the cause, later ones the consequences."""
        self.error_lines = 0
        self.no_video_stream = False
        self.output_size: tuple[int, int] | None = None
        self.size_known = threading.Event()

    def run(self) -> None:
        for raw in self._stream:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if any(level in line for level in _ERROR_LEVELS):
                self.error_lines += 1
                self.first_error = self.first_error or _LOG_PREFIXES.sub("", line).strip()
                self.no_video_stream |= "matches no streams" in line
            if self.output_size is None:
                match = _OUTPUT_SIZE.search(line)
                if match:
                    self.output_size = (int(match.group(2)), int(match.group(1)))  # (height, width)
                    self.size_known.set()
        self.size_known.set()


class VideoDecoder:
    """Frames of one video, decoded in one sequential pass.

    ``for frame in VideoDecoder(path, options)`` yields each frame as a fresh ``uint8`` array
    (height, width, 3), RGB; leaving the loop early stops ffmpeg. To decode into arrays of your own,
    ``with VideoDecoder(path, options) as video: video.read_into(array)`` (False at the end).
    Afterwards: ``frames_read``, and ``damage`` (None, or ffmpeg's complaint when the file was damaged).
    Raises ``DecodeError`` when the video yields no frame at all.
    """

    def __init__(self, path: str | Path, options: DecodeOptions) -> None:
        self.path = Path(path)
        self.options = options
        self.frames_read = 0
        self.damage: str | None = None
        self.frame_shape: tuple[int, int, int] | None = None
        """(height, width, 3); known once ffmpeg is started."""
        self.process: subprocess.Popen | None = None
        """The ffmpeg process (ended once the decoder is closed)."""
        self._drain: _StderrDrain | None = None
        self._watchdog: _Watchdog | None = None
        self._ended = False

    def __iter__(self) -> Iterator[np.ndarray]:
        with self:
            while True:
                frame = np.empty(self.frame_shape, dtype=np.uint8)
                if not self.read_into(frame):
                    return
                yield frame

    def __enter__(self) -> "VideoDecoder":
        self.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def open(self) -> None:
        """Start ffmpeg (raises ``DecodeError`` for a missing or empty file)."""
        self._check_file()
        self.process = subprocess.Popen(
            ffmpeg_command(self.path, self.options), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self._drain = _StderrDrain(self.process.stderr)
        self._drain.start()
        if self.options.stall_timeout is not None:
            self._watchdog = _Watchdog(self, self.options.stall_timeout)
            self._watchdog.start()
        _widen_pipe(self.process.stdout)
        try:
            self.frame_shape = (*self.options.crop, 3) if self.options.crop else self._output_shape()
        except BaseException:
            self.close()
            raise

    def _output_shape(self) -> tuple[int, int, int]:
        """The whole scaled frame's shape, as ffmpeg reports its output stream (no crop)."""
        self._drain.size_known.wait()
        if self._drain.output_size is None:
            self._end_of_stream()  # ffmpeg gave up before producing output: raises why
        height, width = self._drain.output_size
        if min(height, width) < self.options.size:  # ffmpeg fitted the frame in the pixel box (module doc)
            raise DecodeError(
                self.path, TOO_LARGE,
                f"{self.path}: frames scaled to a short side of {self.options.size} would exceed "
                f"{self.options.max_frame_pixels} pixels (an aspect ratio beyond {width}:{height}); not decoded",
            )
        return (height, width, 3)

    @property
    def stalled(self) -> bool:
        """Whether ffmpeg was stopped for producing no frame within ``stall_timeout``."""
        return self._watchdog is not None and self._watchdog.fired

    def read_into(self, frame: np.ndarray) -> bool:
        """Decode the next frame into ``frame`` (contiguous uint8 of ``frame_shape``); False at the end.

        At the end of a video that gave no frame at all, raises ``DecodeError``.
        """
        if self._ended:
            return False
        view = memoryview(frame).cast("B")
        filled = 0
        while filled < len(view):
            got = self.process.stdout.readinto(view[filled:])
            if not got:
                if filled:
                    self.damage = f"the last frame was cut short ({filled} of {len(view)} bytes)"
                self._end_of_stream()
                return False
            filled += got
        self.frames_read += 1
        return True

    def close(self) -> None:
        """Stop ffmpeg if it is still running (closing its output pipe ends it)."""
        if self._watchdog is not None:
            self._watchdog.stop()
        if self.process is not None:
            _stop(self.process, self._drain)

    def _check_file(self) -> None:
        if not self.path.exists():
            raise DecodeError(self.path, MISSING, f"video file {self.path} not found")
        if self.path.is_dir():
            raise DecodeError(self.path, UNREADABLE, f"{self.path} is a folder, not a video file")
        if self.path.stat().st_size == 0:
            raise DecodeError(self.path, EMPTY, f"video file {self.path} is empty (0 bytes)")

    def _end_of_stream(self) -> None:
        """ffmpeg closed its output: wait for it, then judge how decoding went."""
        self._ended = True
        self.process.wait()
        self._drain.join()
        if self.frames_read == 0:
            raise self._no_frames_error(self.process.returncode, self._drain)
        if self.stalled:
            self.damage = self._stall_reason()
        if (self.process.returncode != 0 or self._drain.error_lines) and self.damage is None:
            self.damage = f"ffmpeg: {self._drain.first_error or f'exited with status {self.process.returncode}'}"

    def _stall_reason(self) -> str:
        return f"ffmpeg produced no frame for {self.options.stall_timeout:g} s and was stopped"

    def _no_frames_error(self, returncode: int, drain: _StderrDrain) -> DecodeError:
        if self.stalled:
            return DecodeError(self.path, STALLED, f"{self.path}: {self._stall_reason()} before its first frame")
        if drain.no_video_stream:
            return DecodeError(self.path, NO_VIDEO, f"{self.path} has no video stream (only audio, subtitles or data)")
        if returncode == 0 and not drain.error_lines:
            return DecodeError(self.path, UNREADABLE, f"{self.path}: ffmpeg decoded no frame from its video stream")
        cause = drain.first_error or f"exited with status {returncode}"
        return DecodeError(self.path, UNREADABLE, f"{self.path} is not a video ffmpeg can decode (ffmpeg: {cause})")


class _Watchdog(threading.Thread):
    """Kills ffmpeg when the decoder's frame count has not moved for ``timeout`` seconds."""

    def __init__(self, decoder: VideoDecoder, timeout: float) -> None:
        super().__init__(daemon=True)
        self._decoder = decoder
        self._timeout = timeout
        self._done = threading.Event()
        self.fired = False

    def run(self) -> None:
        seen, since = self._decoder.frames_read, time.monotonic()
        while not self._done.wait(min(1.0, self._timeout / 4)):
            if self._decoder.frames_read != seen:
                seen, since = self._decoder.frames_read, time.monotonic()
            elif time.monotonic() - since > self._timeout and self._decoder.process.poll() is None:
                self.fired = True
                self._decoder.process.kill()  # its pipes close: the reader sees the end of the stream
                return

    def stop(self) -> None:
        self._done.set()


def iter_frames(path: str | Path, options: DecodeOptions) -> Iterator[np.ndarray]:
    """The frames of one video (see ``VideoDecoder``)."""
    return iter(VideoDecoder(path, options))


def _widen_pipe(pipe) -> None:
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)
    except (ImportError, OSError):
        pass  # a smaller pipe only costs speed


def _stop(process: subprocess.Popen, drain: _StderrDrain) -> None:
    """Make sure ffmpeg is gone: closing its stdout ends it when the frames were not all read."""
    process.stdout.close()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    drain.join(timeout=5)
    process.stderr.close()
