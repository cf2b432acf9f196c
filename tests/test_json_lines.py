"""`backup --json`: stdout carries JSON lines only, and the summary line counts what S3 holds."""

from __future__ import annotations

import json
from typing import Any

from conftest import all_keys, four_target_site, run_cli


def test_json_lines_on_stdout_match_what_s3_holds(
    tmp_path: Any, moto_endpoint: str, bucket_prefix: str, s3_inspect: Any
):
    site = four_target_site(tmp_path, moto_endpoint, bucket_prefix)
    result = run_cli("--cache", str(site["cache"]), "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]  # every line parses
    assert lines and all(isinstance(line, dict) for line in lines)
    assert {line["message_type"] for line in lines[:-1]} <= {"status"}
    summary = lines[-1]
    assert summary["message_type"] == "summary"
    held = {name: all_keys(s3_inspect, bucket) for name, bucket in site["buckets"].items()}
    assert summary["files_new"] == sum(len(keys) for keys in held.values()) == len(site["files"])
    assert summary["bytes_uploaded"] == sum(len(data) for data in site["files"].values())
    assert summary["files_failed"] == summary["failures"] == 0 and summary["exit_code"] == 0
    assert summary["seconds_elapsed"] > 0
    per_target = {t["bucket"]: t["files_new"] for t in summary["targets"]}
    assert per_target == {bucket: len(held[name]) for name, bucket in site["buckets"].items()}

    again = run_cli("--cache", str(site["cache"]), "--json", "--dry-run")  # the plan stays off stdout
    assert again.returncode == 0, again.stderr
    [dry] = [json.loads(line) for line in again.stdout.splitlines()]
    assert dry["message_type"] == "summary" and dry["dry_run"] and dry["files_planned"] == 0
