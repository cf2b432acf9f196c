"""Credentials that cannot be had at all are one line naming the profile or source and the fix, exit 1.

Each case runs the real CLI with an isolated AWS configuration (AWS_CONFIG_FILE,
AWS_SHARED_CREDENTIALS_FILE and HOME in tmp, no AWS_* variable of the host), against moto over HTTP.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SECRET_KEY, clean_aws_env, make_tree, run_cli, write_config

AWS_CONFIG = """\
[profile failing-process]
credential_process = sh -c 'echo "token service unreachable" >&2; exit 1'

[profile sso-expired]
sso_session = corp
sso_account_id = 123456789012
sso_role_name = Backup

[sso-session corp]
sso_start_url = https://corp.awsapps.com/start
sso_region = eu-central-1
"""

CASES = {
    # case: (AWS_PROFILE or "", keys in config.json, what the one error line must say)
    "unknown profile": ("nosuch", False, ["'nosuch'", "AWS_PROFILE", "aws-config"]),
    "unknown profile beside keys in config.json": ("nosuch", True, ["'nosuch'", "AWS_PROFILE", "unset AWS_PROFILE"]),
    "no credentials anywhere": ("", False, ["no AWS credentials found", "'default'", "aws-config", "aws.access_key"]),
    "failing credential_process": (
        "failing-process",
        False,
        ["credential_process", "'failing-process'", "token service unreachable", "by hand"],
    ),
    "SSO login missing or expired": ("sso-expired", False, ["aws sso login --profile sso-expired"]),
}


@pytest.mark.parametrize("case", CASES)
def test_credentials_that_cannot_be_had_are_one_line(case: str, tmp_path: Path, moto_endpoint: str, bucket_prefix: str):
    profile, keys, expected = CASES[case]
    make_tree(tmp_path / "tree", {"a.tif": b"a"})
    cache = tmp_path / "cache"
    write_config(cache, moto_endpoint, folders=[str(tmp_path / "tree")], bucket_prefix=bucket_prefix)
    if not keys:
        doc = json.loads((cache / "config.json").read_text())
        del doc["aws"]["access_key"], doc["aws"]["secret_access_key"]
        (cache / "config.json").write_text(json.dumps(doc))
    (tmp_path / "aws-config").write_text(AWS_CONFIG)
    (tmp_path / "aws-credentials").write_text("")
    (tmp_path / "home").mkdir()
    env = clean_aws_env(
        HOME=str(tmp_path / "home"),  # no SSO token cache, no ~/.aws
        AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",  # no instance role to wait for
    )
    if profile:
        env["AWS_PROFILE"] = profile
    result = run_cli("--cache", str(cache), "--print-card", env=env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert SECRET_KEY not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    assert "fatal" in json.dumps(json.loads(result.stdout))  # the card went out all the same
