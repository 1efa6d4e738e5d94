"""Fake input through XTEST on the input connection: pointer, buttons, wheel, keys, text.

Everything here runs on the input connection's thread (see `display.XConnection`), one
action at a time. Keys and buttons pressed by an action are tracked and released in a
`finally`, so no error leaves anything held down.

Typing any Unicode text: a character without a key in the current keymap gets a spare
(empty) keycode remapped to its keysym with ChangeKeyboardMapping. The X server sends
every client a MappingNotify before any later key event, and clients re-read the mapping
when they process that notify. So a slot is only ever *added* while keys that use slots
may still be queued at a client; before a slot is reassigned, the focused client is pinged
(_NET_WM_PING) and its answer proves it has processed every earlier key event. Slots keep
their keysyms between requests (fewer MappingNotify storms) and are emptied on close.
"""

from __future__ import annotations

import logging
import random
import select
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from Xlib import X, Xatom
from Xlib import display as xdisplay
from Xlib import error as xerror
from Xlib.ext import xtest
from Xlib.protocol import event as xevent

from agent.computer import keys as keynames
from agent.computer import paths
from agent.errors import BadRequest, DisplayUnavailable

log = logging.getLogger(__name__)

BUTTONS = {"left": 1, "middle": 2, "right": 3, "back": 8, "forward": 9}
WHEEL_UP, WHEEL_DOWN, WHEEL_LEFT, WHEEL_RIGHT = 4, 5, 6, 7
PING_TIMEOUT_S = 1.0
MULTI_CLICK_GAP_S = 0.005
SYNCS_AFTER_MAPPING = 1
# When the focused client cannot be pinged, give it this long before reusing a slot.
UNPINGABLE_GRACE_S = 0.05


@dataclass
class _Slot:
    keycode: int
    original: list[int]
    keysym: int = 0
    used_since_sync: bool = False


# How often a pausing action looks whether its caller went away.
ABANDON_CHECK_S = 0.05


class Abandoned(Exception):
    """An input job stopped because nobody waits for it any more."""


class InputSession:
    """XTEST input state bound to one open connection."""

    def __init__(self, dpy: xdisplay.Display, closing: threading.Event,
                 cursor_hidden: bool = False) -> None:
        if not dpy.has_extension("XTEST"):
            raise DisplayUnavailable("the X server has no XTEST extension")
        self.dpy = dpy
        self.closing = closing
        self.abandoned: threading.Event | None = None  # set while a job runs, see ComputerManager
        self.root = dpy.screen().root
        self.width = int(dpy.screen().width_in_pixels)
        self.height = int(dpy.screen().height_in_pixels)
        self._pressed_keys: list[int] = []
        self._pressed_buttons: list[int] = []
        self._rng = random.Random()
        self._wm_protocols = dpy.intern_atom("WM_PROTOCOLS")
        self._net_wm_ping = dpy.intern_atom("_NET_WM_PING")
        self._pongs: set[int] = set()
        self._ping_serial = 0
        self._ping_capable: dict[int, int | None] = {}
        # Root events: our pings come back there (SubstructureNotify), and a resize
        # (StructureNotify) updates the bounds.
        self.root.change_attributes(event_mask=X.SubstructureNotifyMask | X.StructureNotifyMask)
        self._keymap: dict[int, tuple[int, int]] = {}
        self._slots: list[_Slot] = []
        self._slot_of: OrderedDict[int, _Slot] = OrderedDict()  # keysym → slot, LRU order
        self._load_keymap(initial=True)
        self.cursor_hidden = False
        if cursor_hidden:
            self.set_cursor(True)
        dpy.sync()

    # -- connection upkeep ---------------------------------------------------------------

    def handle_event(self, event: Any) -> None:
        if event.type == X.MappingNotify:
            if event.request == X.MappingKeyboard and not self._is_own_mapping(event):
                self._load_keymap(initial=False)
        elif event.type == X.ClientMessage:
            if event.client_type == self._wm_protocols:
                data = event.data[1]
                if data[0] == self._net_wm_ping:
                    if len(self._pongs) > 64:  # answers that came after their timeout
                        self._pongs.clear()
                    self._pongs.add(int(data[1]))
        elif event.type == X.ConfigureNotify and event.window == self.root:
            self.width, self.height = int(event.width), int(event.height)

    def close(self) -> None:
        self._release_all()
        for slot in self._slots:
            if slot.keysym:
                self._set_keycode(slot.keycode, slot.original)
        if self.cursor_hidden:
            self.root.xfixes_show_cursor()
        self.dpy.sync()

    def _is_own_mapping(self, event: Any) -> bool:
        own = {slot.keycode for slot in self._slots}
        return all(code in own for code in range(event.first_keycode,
                                                  event.first_keycode + event.count))

    def _load_keymap(self, initial: bool) -> None:
        info = self.dpy.display.info
        first, last = int(info.min_keycode), int(info.max_keycode)
        rows = self.dpy.get_keyboard_mapping(first, last - first + 1)
        own = {slot.keycode: slot for slot in self._slots}
        keymap: dict[int, tuple[int, int]] = {}
        slots: list[_Slot] = []
        for offset, row in enumerate(rows):
            keycode = first + offset
            row = list(row)
            slot = own.get(keycode)
            if slot is not None and (not slot.keysym or row[:2] == [slot.keysym, slot.keysym]):
                slots.append(slot)  # still ours
                continue
            if keycode > 8 and not any(row):
                slots.append(_Slot(keycode, row))
                continue
            for index in (0, 1):
                keysym = row[index] if index < len(row) else 0
                if keysym and (keysym not in keymap or keymap[keysym][1] > index):
                    keymap[keysym] = (keycode, index)
        self._keymap = keymap
        self._slots = slots
        self._slot_of = OrderedDict(
            (slot.keysym, slot) for slot in slots if slot.keysym)
        if initial:
            log.debug("keymap: %d keysyms, %d spare keycodes", len(keymap), len(slots))

    # -- low level -----------------------------------------------------------------------

    def _key(self, keycode: int, down: bool) -> None:
        xtest.fake_input(self.dpy, X.KeyPress if down else X.KeyRelease, keycode)
        if down:
            self._pressed_keys.append(keycode)
        elif keycode in self._pressed_keys:
            self._pressed_keys.remove(keycode)

    def _button(self, button: int, down: bool) -> None:
        xtest.fake_input(self.dpy, X.ButtonPress if down else X.ButtonRelease, button)
        if down:
            self._pressed_buttons.append(button)
        elif button in self._pressed_buttons:
            self._pressed_buttons.remove(button)

    def _motion(self, x: int, y: int) -> None:
        xtest.fake_input(self.dpy, X.MotionNotify, 0, x=x, y=y)

    def _release_all(self) -> None:
        for button in reversed(list(self._pressed_buttons)):
            self._button(button, False)
        for keycode in reversed(list(self._pressed_keys)):
            self._key(keycode, False)
        self.dpy.sync()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Whatever happens inside, nothing stays pressed and the server saw it all."""
        try:
            yield
        finally:
            if self._pressed_buttons or self._pressed_keys:
                self._release_all()
        self.dpy.sync()

    def _sleep(self, seconds: float) -> None:
        """Pause an action; it stops here when the daemon shuts down or its caller left."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.closing.wait(min(left, ABANDON_CHECK_S)):
                raise DisplayUnavailable("the computer controller is shutting down")
            if self.abandoned is not None and self.abandoned.is_set():
                raise Abandoned("the caller went away")

    def _sleep_until(self, deadline: float) -> None:
        self.dpy.flush()
        self._sleep(deadline - time.monotonic())

    # -- keys ----------------------------------------------------------------------------

    def _keycode_for(self, keysym: int) -> tuple[int, bool]:
        """(keycode, needs shift) for a keysym, remapping a spare keycode when needed."""
        slot = self._slot_of.get(keysym)
        if slot is None:
            found = self._keymap.get(keysym)
            if found is not None:
                return found[0], found[1] == 1
            self._map_slots([keysym])
            slot = self._slot_of[keysym]
        self._slot_of.move_to_end(keysym)
        slot.used_since_sync = True
        return slot.keycode, False

    def _needs_slot(self, keysym: int) -> bool:
        return keysym not in self._slot_of and keysym not in self._keymap

    def _map_ahead(self, keysyms: Sequence[int], start: int) -> None:
        """Map the next keysyms without a key (as many as there are spare keycodes) at
        once, so that the clients are synchronised once per batch, not per character."""
        wanted: list[int] = []
        seen: set[int] = set()
        for keysym in keysyms[start:]:
            if keysym in seen or keysym in self._keymap:
                continue
            if len(seen) == len(self._slots):
                break
            seen.add(keysym)
            if keysym not in self._slot_of:
                wanted.append(keysym)
        self._map_slots(wanted, keep=seen)

    def _map_slots(self, keysyms: Sequence[int], keep: set[int] | None = None) -> None:
        if not keysyms:
            return
        if not self._slots:
            raise BadRequest("no spare keycode to map a key to")
        keep = keep if keep is not None else set(keysyms)
        victims = [slot for slot in self._slots if not slot.keysym]
        victims += [slot for keysym, slot in self._slot_of.items() if keysym not in keep]
        victims = victims[:len(keysyms)]
        if any(slot.used_since_sync for slot in victims):
            # The receiving client may still have key events for these keycodes queued.
            self._sync_with_focus_client()
            for slot in self._slots:
                slot.used_since_sync = False
        for keysym, slot in zip(keysyms, victims, strict=False):
            self._set_keycode(slot.keycode, [keysym, keysym])
            if slot.keysym:
                self._slot_of.pop(slot.keysym, None)
            slot.keysym = keysym
            self._slot_of[keysym] = slot
        # Clients must have read the new mapping before the first key event using it.
        for _ in range(SYNCS_AFTER_MAPPING):
            self._sync_with_focus_client()

    def _set_keycode(self, keycode: int, keysyms: list[int]) -> None:
        self.dpy.change_keyboard_mapping(keycode, [tuple(keysyms)])

    def _sync_with_focus_client(self) -> None:
        """Wait until the client receiving keys has processed every event sent so far."""
        window = self._ping_target()
        if window is None:
            self.dpy.sync()
            self._sleep(UNPINGABLE_GRACE_S)
            return
        self._ping_serial = (self._ping_serial + 1) & 0x7FFFFFFF
        serial = self._ping_serial
        target = self.dpy.create_resource_object("window", window)
        message = xevent.ClientMessage(
            window=target, client_type=self._wm_protocols,
            data=(32, [self._net_wm_ping, serial, window, 0, 0]))
        target.send_event(message, event_mask=0)
        self.dpy.flush()
        deadline = time.monotonic() + PING_TIMEOUT_S
        while serial not in self._pongs:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("window 0x%x did not answer a ping in %.1fs", window, PING_TIMEOUT_S)
                return
            while self.dpy.pending_events():
                self.handle_event(self.dpy.next_event())
            if serial in self._pongs:
                break
            select.select([self.dpy.fileno()], [], [], min(left, 0.05))
        self._pongs.discard(serial)

    def _ping_target(self) -> int | None:
        """The top-level window of the client that gets the keys, if it answers pings."""
        if len(self._ping_capable) > 256:
            self._ping_capable.clear()
        try:
            return self._find_ping_target()
        except xerror.XError:  # a window went away while we looked
            return None

    def _find_ping_target(self) -> int | None:
        focus = self.dpy.get_input_focus().focus
        if isinstance(focus, int) or focus.id in (X.NONE, X.PointerRoot, self.root.id):
            child = self.root.query_pointer().child
            if child in (X.NONE, 0) or isinstance(child, int):
                return None
            focus = child
        window = focus
        for _ in range(32):
            wid = int(window.id)
            if wid in self._ping_capable:
                return self._ping_capable[wid]
            if self._supports_ping(window):
                self._ping_capable[wid] = wid
                return wid
            tree = window.query_tree()
            if tree.parent in (X.NONE, 0) or int(tree.parent.id) == self.root.id:
                break
            window = tree.parent
        # A window manager's frame: the client window is a child of it.
        for child in window.query_tree().children:
            if self._supports_ping(child):
                self._ping_capable[int(focus.id)] = int(child.id)
                return int(child.id)
        self._ping_capable[int(focus.id)] = None
        return None

    def _supports_ping(self, window: Any) -> bool:
        prop = window.get_full_property(self._wm_protocols, Xatom.ATOM)
        return prop is not None and self._net_wm_ping in prop.value

    def _shift_keycode(self) -> int:
        return self._keycode_for(keynames.SHIFT_L)[0]

    def _press_keysyms(self, keysyms: Sequence[int]) -> None:
        for keysym in keysyms:
            keycode, shift = self._keycode_for(keysym)
            if shift and keysym not in keynames.MODIFIER_KEYSYMS:
                shift_code = self._shift_keycode()
                if shift_code not in self._pressed_keys:
                    self._key(shift_code, True)
            self._key(keycode, True)

    def _tap_keysym(self, keysym: int) -> None:
        keycode, shift = self._keycode_for(keysym)
        shift_code = self._shift_keycode() if shift else 0
        add_shift = bool(shift_code) and shift_code not in self._pressed_keys
        if add_shift:
            self._key(shift_code, True)
        self._key(keycode, True)
        self._key(keycode, False)
        if add_shift:
            self._key(shift_code, False)

    def _hold(self, keysyms: Sequence[int]) -> None:
        for keysym in keysyms:
            self._key(self._keycode_for(keysym)[0], True)

    def _release_pressed(self) -> None:
        for keycode in reversed(list(self._pressed_keys)):
            self._key(keycode, False)

    # -- bounds --------------------------------------------------------------------------

    def check_point(self, x: int, y: int, field: str = "") -> None:
        if not (0 <= x < self.width and 0 <= y < self.height):
            where = field or "x, y"
            raise BadRequest.for_field(
                field or "x", f"({x}, {y}) is outside the screen ({self.width}x{self.height})",
                f"{where}: ({x}, {y}) is outside the screen ({self.width}x{self.height})",
                detail_code="out_of_bounds")

    # -- actions -------------------------------------------------------------------------

    def pointer(self) -> tuple[int, int]:
        reply = self.root.query_pointer()
        return int(reply.root_x), int(reply.root_y)

    def move(self, x: int, y: int, smooth: bool = True, duration_ms: int | None = None,
             hold_keys: Sequence[int] = ()) -> None:
        self.check_point(x, y)
        with self._guard():
            self._hold(hold_keys)
            if smooth:
                self._glide([(x, y)], duration_ms)
            else:
                self._motion(x, y)

    def _glide(self, waypoints: Sequence[paths.Point], duration_ms: int | None) -> None:
        start = self.pointer()
        steps = paths.smooth_path([start, *waypoints], duration_ms, (self.width, self.height),
                                  self._rng)
        began = time.monotonic()
        for step in steps:
            self._sleep_until(began + step.at_ms / 1000.0)
            self._motion(step.x, step.y)
        self.dpy.flush()

    def click(self, x: int, y: int, button: str = "left", click_type: str = "click",
              num_clicks: int = 1, hold_keys: Sequence[int] = ()) -> None:
        self.check_point(x, y)
        code = BUTTONS[button]
        with self._guard():
            self._hold(hold_keys)
            self._motion(x, y)
            if click_type == "down":
                self._button(code, True)
                self._pressed_buttons.remove(code)  # stays down on purpose
            elif click_type == "up":
                self._button(code, False)
            else:
                for i in range(max(1, num_clicks)):
                    if i:
                        # Clicks with the same server timestamp do not count as a
                        # double click in Chromium; a few ms apart they do.
                        self._sleep_until(time.monotonic() + MULTI_CLICK_GAP_S)
                    self._button(code, True)
                    self._button(code, False)
            self._release_pressed()

    def scroll(self, x: int, y: int, delta_x: int = 0, delta_y: int = 0,
               hold_keys: Sequence[int] = ()) -> None:
        self.check_point(x, y)
        with self._guard():
            self._hold(hold_keys)
            self._motion(x, y)
            vertical = WHEEL_DOWN if delta_y > 0 else WHEEL_UP
            for _ in range(abs(delta_y)):
                self._button(vertical, True)
                self._button(vertical, False)
            horizontal = WHEEL_RIGHT if delta_x > 0 else WHEEL_LEFT
            for _ in range(abs(delta_x)):
                self._button(horizontal, True)
                self._button(horizontal, False)
            self._release_pressed()

    def drag(self, path: Sequence[paths.Point], button: str = "left", delay: int = 0,
             steps_per_segment: int = 10, step_delay_ms: int = 50, smooth: bool = True,
             duration_ms: int | None = None, hold_keys: Sequence[int] = ()) -> None:
        for i, (x, y) in enumerate(path):
            self.check_point(x, y, f"path.{i}")
        code = BUTTONS[button]
        with self._guard():
            self._hold(hold_keys)
            self._motion(*path[0])
            self._button(code, True)
            self.dpy.flush()
            self._sleep(delay / 1000.0)
            if smooth:
                self._glide(path[1:], duration_ms)
            else:
                previous = path[0]
                first = True
                for point in path[1:]:
                    for step in paths.linear(previous, point, steps_per_segment):
                        if not first:
                            self.dpy.flush()
                            self._sleep(step_delay_ms / 1000.0)
                        first = False
                        self._motion(*step)
                    previous = point
            self._button(code, False)
            self._release_pressed()

    def press_keys(self, combos: Sequence[Sequence[int]], duration: int = 0,
                   hold_keys: Sequence[int] = ()) -> None:
        with self._guard():
            self._hold(hold_keys)
            held = len(self._pressed_keys)
            if duration > 0:
                for combo in combos:
                    self._press_keysyms(combo)
                self._sleep_until(time.monotonic() + duration / 1000.0)
                self._release_since(held)
            else:
                for combo in combos:
                    if len(combo) == 1:
                        self._tap_keysym(combo[0])
                    else:
                        self._press_keysyms(combo)
                        self._release_since(held)
            self._release_pressed()

    def _release_since(self, held: int) -> None:
        for keycode in reversed(self._pressed_keys[held:]):
            self._key(keycode, False)

    def type_text(self, text: str, delay: int = 0) -> None:
        keysyms = [keynames.keysym_for_char(c) for c in text.replace("\r\n", "\n")]
        with self._guard():
            for i, keysym in enumerate(keysyms):
                if i and delay > 0:
                    self._sleep_until(time.monotonic() + delay / 1000.0)
                if self._needs_slot(keysym):
                    self._map_ahead(keysyms, i)
                self._tap_keysym(keysym)

    def set_cursor(self, hidden: bool) -> None:
        if hidden and not self.cursor_hidden:
            self.root.xfixes_hide_cursor()
        elif not hidden and self.cursor_hidden:
            self.root.xfixes_show_cursor()
        self.cursor_hidden = hidden
        self.dpy.sync()

    def sleep(self, duration_ms: int) -> None:
        self._sleep(duration_ms / 1000.0)


def input_factory(closing: threading.Event,
                  cursor_state: Callable[[], bool]) -> Callable[[xdisplay.Display], InputSession]:
    def factory(dpy: xdisplay.Display) -> InputSession:
        if not dpy.has_extension("XFIXES"):
            raise DisplayUnavailable("the X server has no XFIXES extension")
        dpy.xfixes_query_version()
        return InputSession(dpy, closing, cursor_hidden=cursor_state())

    return factory
