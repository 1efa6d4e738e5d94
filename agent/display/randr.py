"""Resizing the X screen with RandR 1.2 (runs on an X connection's thread).

Xvfb offers one output on one CRTC and lets the screen shrink and grow again up to the
size it was started with (its framebuffer is allocated once). RRSetScreenSize refuses a
screen smaller than an active CRTC, so a resize switches the CRTC off, sets the screen
size, and switches it back on with a mode of the new size (created the first time).

There is no window manager: nothing would tell Chromium about the new screen. So every
application window (mapped, top-level, not override-redirect: menus and popups keep
theirs) is configured to fill it, as a maximised window would be; Chromium follows the
ConfigureNotify (its own Browser.setWindowBounds stops one pixel short of the screen).
"""

from __future__ import annotations

from dataclasses import dataclass

from Xlib import X
from Xlib import display as xdisplay
from Xlib import error as xerror

from agent.errors import BadRequest, DisplayUnavailable, field_error

MIN_WIDTH, MIN_HEIGHT = 320, 240
DPI = 96


@dataclass(frozen=True)
class ScreenSize:
    width: int
    height: int
    max_width: int
    max_height: int

    def to_json(self) -> dict[str, int]:
        return {"width": self.width, "height": self.height, "max_width": self.max_width,
                "max_height": self.max_height}


def _check(dpy: xdisplay.Display) -> None:
    if not dpy.has_extension("RANDR"):
        raise DisplayUnavailable("the X server has no RandR extension: its size is fixed")
    dpy.xrandr_query_version()


def screen_size(dpy: xdisplay.Display) -> ScreenSize:
    _check(dpy)
    root = dpy.screen().root
    limits = root.xrandr_get_screen_size_range()
    geometry = root.get_geometry()
    return ScreenSize(int(geometry.width), int(geometry.height), int(limits.max_width),
                      int(limits.max_height))


def check_size(size: ScreenSize, width: int, height: int) -> None:
    problems = []
    if not MIN_WIDTH <= width <= size.max_width:
        problems.append(field_error("width", f"must be from {MIN_WIDTH} to {size.max_width}",
                                    "out_of_bounds"))
    if not MIN_HEIGHT <= height <= size.max_height:
        problems.append(field_error("height", f"must be from {MIN_HEIGHT} to "
                                    f"{size.max_height}", "out_of_bounds"))
    if problems:
        raise BadRequest(
            f"{width}x{height} does not fit: the X server was started at "
            f"{size.max_width}x{size.max_height} and can change to sizes from "
            f"{MIN_WIDTH}x{MIN_HEIGHT} up to that (start it larger to allow more)",
            details=problems)


def resize(dpy: xdisplay.Display, width: int, height: int) -> ScreenSize:
    size = screen_size(dpy)
    check_size(size, width, height)
    if (size.width, size.height) == (width, height):
        return size
    root = dpy.screen().root
    resources = root.xrandr_get_screen_resources()
    if not resources.crtcs or not resources.outputs:
        raise DisplayUnavailable("the X server has no CRTC or output to resize")
    crtc, output = resources.crtcs[0], resources.outputs[0]
    mode = next((m.id for m in resources.modes
                 if m.width == width and m.height == height), None)
    if mode is None:
        name = f"{width}x{height}"
        info = {"id": 0, "width": width, "height": height, "dot_clock": 60 * width * height,
                "h_sync_start": width, "h_sync_end": width, "h_total": width, "h_skew": 0,
                "v_sync_start": height, "v_sync_end": height, "v_total": height,
                "name_length": len(name), "flags": 0}
        mode = root.xrandr_create_mode(info, name).mode
        dpy.xrandr_add_output_mode(output, mode)
    stamp = resources.config_timestamp
    dpy.xrandr_set_crtc_config(crtc, stamp, 0, 0, 0, 1, [])
    root.xrandr_set_screen_size(width, height, round(width * 25.4 / DPI),
                                round(height * 25.4 / DPI))
    dpy.xrandr_set_crtc_config(crtc, stamp, 0, 0, mode, 1, [output])
    dpy.sync()
    return screen_size(dpy)


def fill_screen(dpy: xdisplay.Display, width: int, height: int) -> int:
    """Make every application window fill the screen; how many there were."""
    count = 0
    for window in dpy.screen().root.query_tree().children:
        try:
            attributes = window.get_attributes()
            if attributes.map_state != X.IsViewable or attributes.override_redirect:
                continue
            window.configure(x=0, y=0, width=width, height=height)
        except xerror.BadWindow:  # gone meanwhile
            continue
        count += 1
    dpy.sync()
    return count
