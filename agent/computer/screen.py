"""Screenshots: MIT-SHM capture, fast encoding, and reuse while the screen is unchanged.

Capture costs well under a millisecond with MIT-SHM (`mss`); encoding is what costs. PNG
is written here directly: rows with filter type None, deflated at level 1 in parallel
bands, one encoder thread per core (the deflater releases the GIL). The deflater is
zlib-ng's (the `zlib-ng` package): its level 1 is a dedicated fast strategy, 3-6x faster
than zlib's level 1 on screen content for files about a fifth larger, and the stream it
writes is ordinary zlib/deflate that every PNG reader decodes. JPEG and WebP go through
Pillow.

The X DAMAGE extension tells whether anything was drawn since the last capture: a
DamageNotify arrives when the damage region of the root window becomes non-empty, and it
is emptied right before each capture. While nothing was drawn, the last encoded image is
answered again (after one round trip to make sure no notify is still in flight).
"""

from __future__ import annotations

import functools
import io
import logging
import os
import struct
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import mss
from mss.exception import ScreenShotError
from PIL import Image
from Xlib import X
from Xlib import display as xdisplay
from Xlib.ext import damage
from zlib_ng import zlib_ng

from agent.computer.display import drain_events
from agent.errors import BadRequest, DisplayUnavailable, field_error
from agent.osutil import libc

log = logging.getLogger(__name__)

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
DEFAULT_QUALITY = 80
CACHE_ENTRIES = 4


@dataclass(frozen=True)
class Region:
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class ShotRequest:
    region: Region | None = None
    format: str = "png"
    quality: int | None = None
    scale_width: int | None = None
    scale_height: int | None = None


@dataclass(frozen=True)
class DamageGrab:
    """What the live view needs after a tick: the screen size, the pointer, and the BGRX
    pixels of every area drawn on since the previous grab (the whole screen when `full`)."""

    width: int
    height: int
    pointer: tuple[int, int]
    full: bool
    areas: list[tuple[Region, bytes | bytearray]]


# Damage boxes kept for the live view between grabs; past that, one bounding box.
MAX_LIVE_BOXES = 32


@dataclass(frozen=True)
class Shot:
    data: bytes
    content_type: str
    width: int
    height: int
    reused: bool = False


BAND_ROWS = 64
# Encoder threads, one per core: also how many groups a frame's bands are encoded in.
ENCODERS = max(2, os.cpu_count() or 2)
_ADLER_BASE = 65521


@dataclass(frozen=True)
class Band:
    """One horizontal band of PNG scanlines, deflated on its own (ending on a full flush,
    or finished when it is the bottom band), with the Adler-32 of its raw bytes."""

    data: bytes
    adler: int
    length: int


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib_ng.crc32(payload, zlib_ng.crc32(kind))
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def adler32_combine(first: int, second: int, second_len: int) -> int:
    """Adler-32 of A+B from those of A and B (as zlib's adler32_combine)."""
    rem = second_len % _ADLER_BASE
    sum1 = first & 0xFFFF
    sum2 = (rem * sum1) % _ADLER_BASE
    sum1 += (second & 0xFFFF) + _ADLER_BASE - 1
    sum2 += ((first >> 16) & 0xFFFF) + ((second >> 16) & 0xFFFF) + _ADLER_BASE - rem
    sum1 %= _ADLER_BASE
    sum2 %= _ADLER_BASE
    return sum1 | (sum2 << 16)


def _deflate_rows(rgb: bytes | memoryview, width: int, rows: int, last: bool) -> Band:
    stride = width * 3
    view = memoryview(rgb)
    # Each row after its filter byte (None): b"\0".join puts one before every row but the
    # first, hence the empty first item.
    lines = b"\x00".join([b"", *[view[y * stride:(y + 1) * stride] for y in range(rows)]])
    packer = zlib_ng.compressobj(1, zlib_ng.DEFLATED, -15)
    data = packer.compress(lines) + packer.flush(
        zlib_ng.Z_FINISH if last else zlib_ng.Z_FULL_FLUSH)
    return Band(data, zlib_ng.adler32(lines), len(lines))


def _band_from_bgrx(bgrx: Any, width: int, rows: int, last: bool) -> Band:
    rgb = Image.frombuffer("RGB", (width, rows), bgrx, "raw", "BGRX", 0, 1).tobytes()
    return _deflate_rows(rgb, width, rows, last)


def _spans(height: int, first: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """(top, rows) of every band from band index `first` up to `end` (exclusive)."""
    count = (height + BAND_ROWS - 1) // BAND_ROWS
    stop = count if end is None else min(end, count)
    return [(i * BAND_ROWS, min(BAND_ROWS, height - i * BAND_ROWS)) for i in range(first, stop)]


def _map(pool: Executor | None, fn: Any, *columns: list[Any]) -> list[Band]:
    """`fn` over the bands, in order: in as many contiguous groups as there are cores, the
    first on this thread and the others on the pool. (A task per band costs more than it
    gains: converting and joining a band's rows holds the GIL, only deflating lets go.)"""
    jobs = list(zip(*columns, strict=True))

    def run(group: list[tuple[Any, ...]]) -> list[Band]:
        return [fn(*args) for args in group]

    if pool is None or len(jobs) < 2:
        return run(jobs)
    size = -(-len(jobs) // min(len(jobs), ENCODERS))
    groups = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    others = [pool.submit(run, group) for group in groups[1:]]
    bands = run(groups[0])
    for future in others:
        bands.extend(future.result())
    return bands


def encode_bands_bgrx(bgrx: bytes | bytearray | memoryview, width: int, height: int,
                      pool: Executor | None, top: int = 0,
                      total_height: int | None = None) -> list[Band]:
    """Bands of BGRX pixels (rows `top`.. of an image `total_height` high), in parallel."""
    total = height if total_height is None else total_height
    view = memoryview(bgrx)
    spans = [(y, n) for y, n in _spans(total) if top <= y < top + height]
    stride = width * 4
    return _map(pool, _band_from_bgrx,
                [view[(y - top) * stride:(y - top + n) * stride] for y, n in spans],
                [width] * len(spans), [n for _, n in spans],
                [y + n >= total for y, n in spans])


def assemble_png(bands: list[Band], width: int, height: int) -> bytes:
    adler = bands[0].adler
    for band in bands[1:]:
        adler = adler32_combine(adler, band.adler, band.length)
    stream = b"\x78\x01" + b"".join(band.data for band in bands) + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", stream)
            + _png_chunk(b"IEND", b""))


def encode_png(rgb: bytes, width: int, height: int, pool: Executor | None = None) -> bytes:
    """An 8-bit RGB PNG of `rgb` (rows top to bottom, no padding): scanlines with filter
    type None, deflated at level 1 in bands that compress in parallel."""
    view = memoryview(rgb)
    stride = width * 3
    spans = _spans(height)
    bands = _map(pool, _deflate_rows, [view[y * stride:(y + n) * stride] for y, n in spans],
                 [width] * len(spans), [n for _, n in spans],
                 [y + n >= height for y, n in spans])
    return assemble_png(bands, width, height)


def release_free_memory() -> None:
    """Give freed heap memory back to the system (glibc keeps the big encode buffers of
    every thread's arena otherwise); called once screenshots have gone quiet."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    try:
        return libc().malloc_trim
    except (OSError, AttributeError):
        return None


def encode(image: Image.Image, fmt: str, quality: int | None, pool: Executor | None) -> bytes:
    if fmt == "png":
        return encode_png(image.tobytes(), image.width, image.height, pool)
    out = io.BytesIO()
    q = DEFAULT_QUALITY if quality is None else quality
    if fmt == "jpeg":
        image.save(out, "JPEG", quality=q)
    elif fmt == "webp":
        image.save(out, "WEBP", quality=q, method=0)
    else:
        raise BadRequest.for_field(
            "format", "must be png, jpeg or webp", f"unsupported format {fmt!r}")
    return out.getvalue()


def _bounding(boxes: list[Region]) -> Region:
    left = min(b.x for b in boxes)
    top = min(b.y for b in boxes)
    right = max(b.x + b.width for b in boxes)
    bottom = max(b.y + b.height for b in boxes)
    return Region(left, top, right - left, bottom - top)


def _clip(box: Region, width: int, height: int) -> Region | None:
    left, top = max(0, box.x), max(0, box.y)
    right, bottom = min(width, box.x + box.width), min(height, box.y + box.height)
    if right <= left or bottom <= top:
        return None
    return Region(left, top, right - left, bottom - top)


def target_size(source: tuple[int, int], width: int | None,
                height: int | None) -> tuple[int, int] | None:
    """The size that fits `source` within a width x height box, keeping its aspect ratio;
    None when it already fits (never upscaled)."""
    if width is None or height is None:
        return None
    sw, sh = source
    if width < 1 or height < 1:
        raise BadRequest.for_field(
            "scale_to", "width and height must be at least 1",
            "scale_to: width and height must be at least 1")
    factor = min(width / sw, height / sh)
    if factor >= 1.0:
        return None
    return max(1, min(width, round(sw * factor))), max(1, min(height, round(sh * factor)))


class CaptureSession:
    """The read connection: damage tracking, pointer queries, and the capture object."""

    def __init__(self, dpy: xdisplay.Display, pool: Executor | None) -> None:
        if not dpy.has_extension("DAMAGE"):
            raise DisplayUnavailable("the X server has no DAMAGE extension")
        self.dpy = dpy
        self.pool = pool
        self.root = dpy.screen().root
        self.width = int(dpy.screen().width_in_pixels)
        self.height = int(dpy.screen().height_in_pixels)
        dpy.damage_query_version()
        self.root.change_attributes(event_mask=X.StructureNotifyMask)
        self._damage = self.root.damage_create(damage.DamageReportBoundingBox)
        self._damage_event = dpy.extension_event.DamageNotify
        self._dirty = True  # since the images in _cache were captured
        self._cache: dict[ShotRequest, Shot] = {}
        # The full screen as PNG bands, and the rows drawn on since they were encoded.
        self._bands: list[Band] = []
        self._dirty_rows: tuple[int, int] | None = None
        self._grabber: Any = None
        # For the live view: boxes drawn on since its last grab (None: grab everything).
        self._live_boxes: list[Region] | None = None
        dpy.sync()

    def handle_event(self, event: Any) -> None:
        if event.type == self._damage_event:
            self._dirty = True
            top, bottom = int(event.area.y), int(event.area.y) + int(event.area.height)
            if self._dirty_rows is not None:
                top, bottom = min(top, self._dirty_rows[0]), max(bottom, self._dirty_rows[1])
            self._dirty_rows = (max(0, top), min(self.height, bottom))
            if self._live_boxes is not None:
                self._live_boxes.append(Region(int(event.area.x), int(event.area.y),
                                               int(event.area.width), int(event.area.height)))
                if len(self._live_boxes) > MAX_LIVE_BOXES:
                    self._live_boxes = [_bounding(self._live_boxes)]
        elif event.type == X.ConfigureNotify and event.window == self.root:
            self.width, self.height = int(event.width), int(event.height)
            self._dirty = True
            self._bands = []
            self._live_boxes = None
            self._reset_grabber()

    def close(self) -> None:
        self._reset_grabber()
        self.dpy.damage_destroy(self._damage)

    def _reset_grabber(self) -> None:
        grabber, self._grabber = self._grabber, None
        if grabber is not None:
            try:
                grabber.close()
            except ScreenShotError:
                log.debug("closing the capture connection failed", exc_info=True)

    def release_idle(self) -> None:
        """While screenshots rest: free the capture connection and its full-screen buffer,
        and the encoded images kept for an unchanged screen. The full screen's PNG bands
        stay, so a full PNG of a screen still unchanged is put together again from them
        without a capture (the kept image was a second copy of those bands: ~6 MB for a
        screen of noise at 1920x1080)."""
        self._reset_grabber()
        self._cache.clear()

    @property
    def capturing(self) -> bool:
        """Whether the capture connection (and its shared memory) is open."""
        return self._grabber is not None

    def pointer(self) -> tuple[int, int]:
        reply = self.root.query_pointer()
        return int(reply.root_x), int(reply.root_y)

    def check_region(self, region: Region | None) -> Region:
        if region is None:
            return Region(0, 0, self.width, self.height)
        problems = []
        if region.width < 1 or region.height < 1:
            problems.append(field_error("region", "width and height must be at least 1"))
        if region.x < 0 or region.y < 0:
            problems.append(field_error("region", "x and y must not be negative"))
        if region.x + region.width > self.width or region.y + region.height > self.height:
            problems.append(field_error(
                "region", f"{region.width}x{region.height}+{region.x}+{region.y} reaches past "
                f"the screen ({self.width}x{self.height})", "out_of_bounds"))
        if problems:
            raise BadRequest(problems[0]["message"], details=problems)
        return region

    def screenshot(self, request: ShotRequest) -> Shot:
        region = self.check_region(request.region)
        size = target_size((region.width, region.height), request.scale_width,
                           request.scale_height)
        # Any drawing the server did before now has sent its DamageNotify by the time
        # this round trip returns.
        self.dpy.sync()
        drain_events(self.dpy, self.handle_event)
        if not self._dirty:
            cached = self._cache.get(request)
            if cached is not None:
                return Shot(cached.data, cached.content_type, cached.width, cached.height, True)
        else:
            self._cache.clear()
        if request.format == "png" and size is None and request.region is None:
            shot = self._full_png()
        else:
            self._repair()
            image = self._image(region)
            if size is not None:
                image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
            data = encode(image, request.format, request.quality, self.pool)
            shot = Shot(data, CONTENT_TYPES[request.format], image.width, image.height)
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.pop(next(iter(self._cache)))
        self._cache[request] = shot
        return shot

    def grab_damage(self, full: bool) -> DamageGrab:
        """The areas drawn on since the previous call (all of the screen when `full`, after
        a resize, or on the first call), clipped to the screen, with their pixels.

        Two round trips, since the live view calls this many times a second while the X
        server is busy drawing: the pointer query after DamageSubtract (so the damage is
        emptied before the capture on mss's own connection starts), and the capture.
        Notifies still in flight are simply picked up by the next call."""
        drain_events(self.dpy, self.handle_event)
        boxes = self._live_boxes
        everything = full or boxes is None
        if everything:
            areas = [Region(0, 0, self.width, self.height)]
        else:
            areas = [r for r in (_clip(box, self.width, self.height) for box in boxes or [])
                     if r is not None]
        self._live_boxes = []
        if areas:
            # Empty the damage region (as _repair, but the screenshot cache keeps its own
            # dirty flag: the notifies drained above already set it).
            self.dpy.damage_subtract(self._damage)
        pointer = self.pointer()
        grabbed: list[tuple[Region, bytes | bytearray]] = [
            (area, self._grab_raw(area)[0]) for area in areas]  # fresh buffers, not copied
        return DamageGrab(self.width, self.height, pointer, everything, grabbed)

    def _repair(self) -> None:
        """Empty the damage region before capturing: drawing from now on is reported."""
        self.dpy.damage_subtract(self._damage)
        self.dpy.sync()  # emptied before the capture that follows starts
        self._dirty = False

    def _full_png(self) -> Shot:
        """The full screen as PNG, re-encoding only the bands drawn on since last time."""
        count = (self.height + BAND_ROWS - 1) // BAND_ROWS
        if len(self._bands) != count:
            first, end = 0, count
        elif self._dirty_rows is not None:
            first = self._dirty_rows[0] // BAND_ROWS
            end = min(count, (self._dirty_rows[1] + BAND_ROWS - 1) // BAND_ROWS)
        else:
            first, end = 0, 0
        self._dirty_rows = None
        self._repair()
        if end > first:
            top = first * BAND_ROWS
            rows = min(self.height, end * BAND_ROWS) - top
            raw, _ = self._grab_raw(Region(0, top, self.width, rows))
            fresh = encode_bands_bgrx(raw, self.width, rows, self.pool, top, self.height)
            if len(self._bands) != count:
                self._bands = fresh
            else:
                self._bands[first:end] = fresh
        data = assemble_png(self._bands, self.width, self.height)
        return Shot(data, CONTENT_TYPES["png"], self.width, self.height)

    def _grab_raw(self, region: Region) -> tuple[bytearray, tuple[int, int]]:
        """BGRX pixels of `region` through MIT-SHM (a fresh capture connection after an
        error, once; a second failure means the display is gone)."""
        monitor = {"left": region.x, "top": region.y, "width": region.width,
                   "height": region.height}
        for attempt in (1, 2):
            try:
                if self._grabber is None:
                    self._grabber = mss.MSS(display=self.dpy.get_display_name())
                shot = self._grabber.grab(monitor)
                return shot.raw, (int(shot.width), int(shot.height))
            except ScreenShotError as exc:
                self._reset_grabber()
                self.dpy.sync()  # raises if the X server is gone
                if attempt == 2:
                    raise DisplayUnavailable(f"screen capture failed: {exc}") from None
        raise AssertionError("unreachable")

    def _image(self, region: Region) -> Image.Image:
        raw, size = self._grab_raw(region)
        return Image.frombuffer("RGB", size, raw, "raw", "BGRX", 0, 1)
