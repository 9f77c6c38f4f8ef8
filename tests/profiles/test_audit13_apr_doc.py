"""Audit 13, docs/apr-profile.md against the profile: its NOT-applied list named 17 fields while
the profile records 34 as NOT applied (teacher_dtype, the data options, teacher_cache, the
on-policy fields... were missing), so a reader could not tell from the doc that --teacher-cache
or --lmbda are dropped. The doc's list is now the profile's, and this test keeps them equal."""

from __future__ import annotations

import re
from pathlib import Path

from kdtui.profiles.apr.schema import LOCAL_ONLY, NOT_APPLIED

DOC = Path(__file__).resolve().parents[2] / "docs" / "apr-profile.md"


def test_the_docs_not_applied_list_is_the_profiles() -> None:
    text = DOC.read_text()
    start = text.index("NOT applied (shown in the dry run")
    listed = text[start:text.index("Used by kdtui only:", start)]
    named = set(re.findall(r"`([a-z_]+)`", listed)) - {"not_applied", "changed_from_default",
                                                          "check"}
    assert named == set(NOT_APPLIED), (sorted(set(NOT_APPLIED) - named),
                                       sorted(named - set(NOT_APPLIED)))
    local = text[text.index("Used by kdtui only:", start):]
    local = local[:local.index("A test pins")]
    assert set(re.findall(r"`([a-z_]+)`", local)) == set(LOCAL_ONLY)
