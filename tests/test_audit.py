"""The audit log of operator commands that read or restore people's data (sf/ops/audit.py)."""

from __future__ import annotations

import json
import logging
import os

import pytest

from sf.ops.audit import audit, audited, os_user


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_call_appends_one_line_saying_who_what_when_and_which_account(base_config, tmp_path,
                                                                          caplog):
    path = tmp_path / "log" / "audit.jsonl"
    config = base_config.replace(audit_log_file=path, operator="")
    with caplog.at_level(logging.INFO, logger="sf.audit"):
        audit(config, "export", 42, {"file": "export-42.zip"})
    config = config.replace(operator="ops-oncall")  # SF_OPERATOR names someone else
    audit(config, "erase", "alice")
    first, second = lines(path)
    assert first["operator"] == os_user() == first["os_user"]
    assert (first["action"], first["account"], first["details"]) == (
        "export", 42, {"file": "export-42.zip"})
    assert second["operator"] == "ops-oncall" and second["os_user"] == os_user()
    assert second["account"] == "alice" and second["time"] > first["time"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [record.action for record in caplog.records if record.name == "sf.audit"] == [
        "export", "erase"]
    # Appended, never rewritten: a third line leaves the first two as they were.
    written = path.read_text()
    audit(config, "backup")
    assert path.read_text().startswith(written) and lines(path)[2]["account"] == "*"


def test_audited_records_the_start_and_how_it_ended(base_config, tmp_path):
    config = base_config.replace(audit_log_file=tmp_path / "audit.jsonl")
    with audited(config, "restore", details={"file": "a.dump"}) as details:
        details["tables"] = 3
    with pytest.raises(ValueError), audited(config, "restore", 7):
        raise ValueError("half way")
    found = [(line["action"], line["account"], line["details"]) for line in
             lines(config.audit_log_file)]
    assert found == [
        ("restore", "*", {"file": "a.dump", "outcome": "started"}),
        ("restore", "*", {"file": "a.dump", "tables": 3, "outcome": "ok"}),
        ("restore", 7, {"outcome": "started"}),
        ("restore", 7, {"outcome": "failed: ValueError"}),
    ]


def test_a_log_that_cannot_be_written_stops_the_command_before_it_reads(base_config, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = base_config.replace(audit_log_file=blocker / "audit.jsonl")
    ran = []
    with pytest.raises(OSError), audited(config, "backup"):
        ran.append(True)
    assert ran == []
    assert not os.path.exists(blocker / "audit.jsonl")
