"""Key names, aliases and combos → keysyms (no X display involved)."""

from __future__ import annotations

import pytest
from Xlib import XK

from agent.computer.keys import (
    keysym_for_char,
    keysym_for_name,
    parse_combo,
    parse_hold_keys,
    parse_keys,
    split_combo,
)
from agent.errors import BadRequest


def ks(name: str) -> int:
    return int(XK.string_to_keysym(name))


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("Return", ["Return"]),
        ("ctrl+a", ["Control_L", "a"]),
        ("Ctrl+Shift+Tab", ["Control_L", "Shift_L", "Tab"]),
        ("CONTROL+shift+t", ["Control_L", "Shift_L", "t"]),
        ("F5", ["F5"]),
        ("f5", ["F5"]),
        ("KP_Enter", ["KP_Enter"]),
        ("Super_L", ["Super_L"]),
        ("cmd+c", ["Super_L", "c"]),
        ("meta", ["Super_L"]),
        ("super", ["Super_L"]),
        ("alt+F4", ["Alt_L", "F4"]),
        ("enter", ["Return"]),
        ("esc", ["Escape"]),
        ("ESCAPE", ["Escape"]),
        ("backspace", ["BackSpace"]),
        ("pageup", ["Prior"]),
        ("PageDown", ["Next"]),
        ("Page_Up", ["Prior"]),
        ("ctrl++", ["Control_L", "plus"]),
        ("+", ["plus"]),
        ("space", ["space"]),
        ("XF86AudioPlay", ["XF86_AudioPlay"]),
    ],
)
def test_combos_resolve(text: str, names: list[str]) -> None:
    assert parse_combo(text, "keys.0") == [ks(name) for name in names]


def test_single_characters_are_case_sensitive() -> None:
    assert parse_combo("a", "k") == [ord("a")]
    assert parse_combo("A", "k") == [ord("A")]


def test_unicode_characters_and_code_points() -> None:
    assert keysym_for_name("é") == 0xE9  # Latin-1 keysym equals the code point
    assert keysym_for_name("日") == 0x1000000 + ord("日")
    assert keysym_for_name("U+00E4") == 0xE4
    assert keysym_for_name("U1F600") == 0x1000000 + 0x1F600
    assert parse_combo("ctrl+U+00e4", "k") == [ks("Control_L"), 0xE4]


def test_text_characters_map_to_keysyms() -> None:
    assert keysym_for_char("\n") == ks("Return")
    assert keysym_for_char("\r") == ks("Return")
    assert keysym_for_char("\t") == ks("Tab")
    assert keysym_for_char("ß") == 0xDF
    assert keysym_for_char("€") == 0x1000000 + 0x20AC
    assert keysym_for_char("😀") == 0x1000000 + 0x1F600


def test_split_keeps_the_plus_key() -> None:
    assert split_combo("ctrl+shift++") == ["ctrl", "shift", "+"]
    assert split_combo(" ctrl + a ") == ["ctrl", "a"]


@pytest.mark.parametrize("text", ["nosuchkey", "ctrl+nosuchkey", "ctrl+", "", "Ctrl+Shift+Tabb"])
def test_unknown_keys_are_a_400_naming_them(text: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_combo(text, "keys.2")
    err = info.value
    assert err.status == 400
    assert err.details and err.details[0]["field"] == "keys.2"
    if text.strip("+").strip():
        bad = text.split("+")[-1] or text
        assert bad in err.message


def test_lists_name_the_failing_item() -> None:
    with pytest.raises(BadRequest) as info:
        parse_keys(["Return", "ctrl+a", "bogus"], "keys")
    assert info.value.details is not None
    assert info.value.details[0]["field"] == "keys.2"
    assert "bogus" in info.value.message


def test_hold_keys_flatten() -> None:
    assert parse_hold_keys(["shift", "ctrl+alt"]) == [ks("Shift_L"), ks("Control_L"), ks("Alt_L")]
    assert parse_hold_keys(None) == []
