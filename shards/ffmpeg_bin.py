"""Which ffmpeg executable to run: the system's when there is one, else the one imageio-ffmpeg bundles.

``VIDEOBERT_FFMPEG`` overrides both (a path to an ffmpeg binary).
"""

from __future__ import annotations

import functools
import os
import shutil

from videobert.models.errors import VideoBertError


class FFmpegNotFound(VideoBertError, RuntimeError):
    """No ffmpeg program: neither the system's, nor imageio-ffmpeg's, nor ``VIDEOBERT_FFMPEG``."""


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Absolute path of the ffmpeg binary every stage uses."""
    override = os.environ.get("VIDEOBERT_FFMPEG")
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise FFmpegNotFound(f"VIDEOBERT_FFMPEG={override!r} is not an executable file")
        return override
    system = shutil.which("ffmpeg")
    if system:
        return system
    try:
        import imageio_ffmpeg
    except ImportError:
        raise FFmpegNotFound(
            "no ffmpeg found: install the system's ffmpeg, or `pip install imageio-ffmpeg` "
            "(a dependency of videobert) for a bundled one"
        ) from None
    return imageio_ffmpeg.get_ffmpeg_exe()
