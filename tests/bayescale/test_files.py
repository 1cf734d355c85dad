"""Resuming finished results (bayescale._files.read_saved)."""

from __future__ import annotations

import json

from bayescale._files import read_saved


def test_a_saved_result_is_reused_only_with_its_settings_and_the_files_beside_it(tmp_path):
    path, beside = tmp_path / "r.json", tmp_path / "r.nc"
    assert read_saved(path, {"a": 1}) is None  # nothing saved yet
    path.write_text(json.dumps({"settings": {"a": 1}, "value": 3}))
    assert read_saved(path, {"a": 1}) == {"settings": {"a": 1}, "value": 3}
    assert read_saved(path, {"a": 2}) is None  # other settings: refit
    assert read_saved(path, {"a": 1}, beside) is None  # its predictions are missing
    beside.write_text("")
    assert read_saved(path, {"a": 1}, beside)["value"] == 3
