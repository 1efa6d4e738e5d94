"""The indexed multipart field names every form-taking slice shares."""

from __future__ import annotations

import pytest

from agent.errors import BadRequest
from agent.multipart import IndexedFields


def extensions() -> IndexedFields:
    return IndexedFields("extensions", ("zip_file", "name"), 64)


def test_field_names_in_every_accepted_form() -> None:
    fields = extensions()
    assert fields.parse("extensions[3][zip_file]") == (3, "zip_file")
    assert fields.parse("extensions[3].name") == (3, "name")
    assert fields.parse("extensions.2.name") == (2, "name")
    # What the Kernel SDKs send: the n-th part of each key is item n.
    assert fields.parse("extensions[][name]") == (0, "name")
    assert fields.parse("extensions[][name]") == (1, "name")
    assert fields.parse("extensions[][zip_file]") == (0, "zip_file")


@pytest.mark.parametrize("name", [
    "extensions", "extensions[0]", "extensions[0][other]", "zip_file", "", None,
    "extensions[x][name]", "files[0][name]", "extensions[0][name]x",
])
def test_other_names_are_a_400_naming_the_field(name: str | None) -> None:
    with pytest.raises(BadRequest) as refused:
        extensions().parse(name)
    assert refused.value.details[0]["code"] == "unknown_field"
    assert "expected extensions[N][zip_file] and extensions[N][name]" in refused.value.message


def test_an_index_past_the_limit_is_a_400() -> None:
    with pytest.raises(BadRequest) as refused:
        extensions().parse("extensions[64][name]")
    assert refused.value.details[0]["field"] == "extensions[64]"
    assert extensions().parse("extensions[63][name]") == (63, "name")


def test_single_item_forms_take_bare_keys() -> None:
    fields = IndexedFields("files", ("file", "dest_path"), 10, singles=("file", "dest_path"))
    assert fields.parse("file") == (0, "file")
    assert fields.parse("dest_path") == (0, "dest_path")
    assert fields.parse("files.4.dest_path") == (4, "dest_path")
    with pytest.raises(BadRequest):
        extensions().parse("name")  # no bare keys where none are declared
