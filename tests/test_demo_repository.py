"""The default repository's stages are built again when what built them changed."""

import json

from exporters.demo import (
    BUILT,
    SIMPLE_CONFIG,
    library_versions,
    outdated,
    publish,
    record_build,
    simple_model,
)


def test_a_stage_is_current_until_a_source_file_or_library_that_built_it_changes(tmp_path):
    assert outdated(tmp_path, "simple") == "not built"
    publish(tmp_path, "simple", simple_model(), SIMPLE_CONFIG)
    assert outdated(tmp_path, "simple") == "built before ortserve recorded what builds its models"

    record_build(tmp_path, "simple")
    assert outdated(tmp_path, "simple") is None
    stamp_file = tmp_path / BUILT / "simple.json"
    stamp = json.loads(stamp_file.read_text())
    assert "exporters/demo.py" in stamp["files"]
    assert all(path.startswith(("exporters/", "server/")) for path in stamp["files"])

    edited = dict(stamp, files={**stamp["files"], "exporters/demo.py": "0" * 64})
    stamp_file.write_text(json.dumps(edited))
    assert outdated(tmp_path, "simple") == "exporters/demo.py changed since"

    stamp_file.write_text("{")
    assert outdated(tmp_path, "simple") == f"its build record {stamp_file} is unreadable"

    numpy = library_versions()["numpy"]
    stamp_file.write_text(json.dumps(dict(stamp, versions={**stamp["versions"], "numpy": "1.0.0"})))
    assert outdated(tmp_path, "simple") == f"built with numpy 1.0.0 -> {numpy}"


def test_a_stage_with_a_variant_missing_is_built_again(tmp_path):
    publish(tmp_path, "simple", simple_model(), SIMPLE_CONFIG)
    record_build(tmp_path, "simple")
    assert outdated(tmp_path, "simple", ("fp32", "int8")) == "not built"
