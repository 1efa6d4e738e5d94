"""Key names → X keysyms, with no X connection involved.

Names are xdotool/X11 keysym names (`Return`, `F5`, `KP_Enter`, `Super_L`), single
characters (`a`, `A`, `é`, `日`), `U+00E4`-style code points, and the usual aliases
(`ctrl`, `alt`, `cmd`, `enter`, `esc`, `pageup`...). Combos join names with `+`
(`ctrl+shift+Tab`, `ctrl++` for the plus key). Multi-letter names match case-insensitively
when that is unambiguous; single characters are taken as written, since `a` and `A` are
different keys to X.
"""

from __future__ import annotations

import functools
import re

from Xlib import XK

from agent.errors import BadRequest

# Every keysym group python-xlib ships, so names like XF86AudioPlay or Cyrillic_a resolve.
_GROUPS = (
    "latin1", "latin2", "latin3", "latin4", "greek", "cyrillic", "katakana", "arabic",
    "hebrew", "thai", "korean", "technical", "special", "publishing", "apl", "xkb",
    "xf86", "xk3270", "miscellany",
)
for _group in _GROUPS:
    XK.load_keysym_group(_group)

_ALIASES: dict[str, str] = {
    "ctrl": "Control_L", "control": "Control_L", "ctl": "Control_L",
    "shift": "Shift_L",
    "alt": "Alt_L", "option": "Alt_L", "opt": "Alt_L",
    "super": "Super_L", "meta": "Super_L", "cmd": "Super_L", "command": "Super_L",
    "win": "Super_L", "windows": "Super_L",
    "altgr": "ISO_Level3_Shift",
    "enter": "Return", "return": "Return",
    "esc": "Escape", "escape": "Escape",
    "backspace": "BackSpace", "bksp": "BackSpace",
    "del": "Delete", "delete": "Delete",
    "ins": "Insert", "insert": "Insert",
    "pageup": "Prior", "pgup": "Prior", "page_up": "Prior",
    "pagedown": "Next", "pgdn": "Next", "page_down": "Next",
    "home": "Home", "end": "End", "tab": "Tab", "space": "space", "spacebar": "space",
    "up": "Up", "down": "Down", "left": "Left", "right": "Right",
    "arrowup": "Up", "arrowdown": "Down", "arrowleft": "Left", "arrowright": "Right",
    "capslock": "Caps_Lock", "numlock": "Num_Lock", "scrolllock": "Scroll_Lock",
    "printscreen": "Print", "prtsc": "Print", "print": "Print",
    "menu": "Menu", "pause": "Pause", "break": "Break",
}

MODIFIER_KEYSYMS = frozenset(
    XK.string_to_keysym(name)
    for name in ("Shift_L", "Shift_R", "Control_L", "Control_R", "Alt_L", "Alt_R",
                 "Meta_L", "Meta_R", "Super_L", "Super_R", "Hyper_L", "Hyper_R",
                 "ISO_Level3_Shift", "Mode_switch")
)

_UNICODE_NAME = re.compile(r"^(?:U\+?|0x)([0-9A-Fa-f]{2,6})$")

SHIFT_L: int = int(XK.string_to_keysym("Shift_L"))
RETURN: int = int(XK.string_to_keysym("Return"))
TAB: int = int(XK.string_to_keysym("Tab"))


@functools.cache
def _names_by_lower() -> dict[str, tuple[int, ...]]:
    table: dict[str, set[int]] = {}
    for attr in dir(XK):
        if attr.startswith("XK_"):
            value = getattr(XK, attr)
            if isinstance(value, int) and value:
                name = attr[3:].lower()
                table.setdefault(name, set()).add(value)
                if name.startswith("xf86_"):  # python-xlib's XF86_AudioPlay is X's XF86AudioPlay
                    table.setdefault("xf86" + name[5:], set()).add(value)
    return {name: tuple(sorted(values)) for name, values in table.items()}


def keysym_for_char(char: str) -> int:
    """The keysym that types `char`: Latin-1 keysyms equal the code point, the rest use the
    Unicode keysym range (0x1000000 + code point)."""
    if char == "\n" or char == "\r":
        return RETURN
    if char == "\t":
        return TAB
    code = ord(char)
    if 0x20 <= code <= 0x7E or 0xA0 <= code <= 0xFF:
        return code
    return 0x1000000 + code


def keysym_for_name(name: str) -> int | None:
    """One key name (no `+`) → keysym, or None when nothing of that name exists."""
    if not name:
        return None
    if len(name) == 1:
        return keysym_for_char(name)
    alias = _ALIASES.get(name.lower())
    if alias is not None:
        return int(XK.string_to_keysym(alias))
    keysym = XK.string_to_keysym(name)
    if keysym:
        return int(keysym)
    match = _UNICODE_NAME.match(name)
    if match:
        code = int(match.group(1), 16)
        if code <= 0x10FFFF:
            return keysym_for_char(chr(code))
        return None
    candidates = _names_by_lower().get(name.lower(), ())
    if len(candidates) == 1:
        return candidates[0]
    return None


_UNICODE_PLUS = re.compile(r"(?<![^+\s])U\+([0-9A-Fa-f]{2,6})(?=$|[+\s])")


def split_combo(text: str) -> list[str]:
    """`ctrl+shift+Tab` → ['ctrl', 'shift', 'Tab']; `ctrl++` and `+` name the plus key."""
    if text == " ":
        return [" "]
    parts = _UNICODE_PLUS.sub(r"U\1", text).split("+")
    names: list[str] = []
    i = 0
    while i < len(parts):
        part = parts[i].strip()
        if part == "" and i + 1 < len(parts) and parts[i + 1].strip() == "":
            names.append("+")
            i += 2
            continue
        names.append(part)
        i += 1
    return names


def parse_combo(text: str, field: str) -> list[int]:
    """A combo string → its keysyms in press order; a 400 naming the key when unknown."""
    if not text.strip() and text != " ":
        raise BadRequest.for_field(
            field, "empty key name", f"{field}: empty key name", detail_code="unknown_key")
    keysyms: list[int] = []
    for name in split_combo(text):
        keysym = keysym_for_name(name)
        if keysym is None:
            shown = f"{name!r} in {text!r}" if name != text else repr(name)
            raise BadRequest.for_field(
                field, f"unknown key {name!r}", f"unknown key: {shown}", detail_code="unknown_key")
        keysyms.append(keysym)
    return keysyms


def parse_keys(items: list[str] | None, field: str) -> list[list[int]]:
    """A list of combos (`keys`, `hold_keys`) → one keysym list per item."""
    return [parse_combo(item, f"{field}.{i}") for i, item in enumerate(items or [])]


def parse_hold_keys(items: list[str] | None, field: str = "hold_keys") -> list[int]:
    """`hold_keys` → a flat keysym list (an item may itself be a combo)."""
    return [keysym for combo in parse_keys(items, field) for keysym in combo]
