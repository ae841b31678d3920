import pytest

from edgehost.engine import layout
from edgehost.errors import BadInput


@pytest.mark.parametrize("slug", ["a", "acme", "acme-2", "0day", "a" * 63, "x-"])
def test_valid_slugs_are_accepted(slug):
    assert layout.check_slug(slug) == slug


@pytest.mark.parametrize("slug", ["", "..", "a/b", "with space", "Acme", "-acme", "a" * 64, "acme.db", "é", "a\n"])
def test_bad_slugs_are_refused_with_the_rule(slug):
    with pytest.raises(BadInput, match="lowercase letters, digits and hyphens"):
        layout.check_slug(slug)


def test_property_paths_follow_the_honestcam_layout(kit_home):
    s = kit_home.settings()
    ref = layout.property_db(s, "acme")
    assert ref.path == s.data_dir / "acme" / "honestcam.db"
    assert ref.relpath == "acme/honestcam.db"
    assert layout.global_db(s).path == s.data_dir / "honestcam-study.db"


def test_names_are_configurable(kit_home):
    s = kit_home.settings(EDGEHOST_PROPERTY_DB_NAME="app.db", EDGEHOST_GLOBAL_DB_NAME="study.db")
    assert layout.property_db(s, "acme").path.name == "app.db"
    assert s.global_db.name == "study.db"


def test_discovery_ignores_non_slug_directories(kit_home):
    s = kit_home.settings()
    for name in ("acme", "beta", "_replaced", "Upper"):
        (s.data_dir / name).mkdir(parents=True)
        (s.data_dir / name / "honestcam.db").write_bytes(b"")
    assert layout.local_slugs(s) == ["acme", "beta"]
