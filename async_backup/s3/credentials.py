"""What botocore's credential errors mean for an operator: one line naming the source and the fix.

Owns the mapping of the errors that say no credentials can be had at all (an unknown profile,
none found anywhere, a `credential_process` that fails, an SSO token that is missing or expired)
to our FatalError: every request of the run would fail alike, so the run stops at the first.
Called where the client is made (a profile is read then) and around every request (SSO and
refreshed credentials are fetched when a request is signed). Never quotes a secret: only
profile names, provider names, file paths and botocore's reason, which names no key.
"""

from __future__ import annotations

import os

from botocore.exceptions import (
    BotoCoreError,
    CredentialRetrievalError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    SSOError,
    TokenRetrievalError,
)

from ..errors import FatalError

KEYS_HINT = "or set aws.access_key and aws.secret_access_key in config.json"
# A reason taken from a helper program's output is cut to this: one line, never its whole stderr.
MAX_REASON_CHARS = 200


def profile_in_use() -> tuple[str, str]:
    """The profile botocore reads and where its name came from (the variables it checks, in order)."""
    for variable in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        if os.environ.get(variable):
            return os.environ[variable], variable
    return "default", "the default"


def _config_files() -> str:
    config = os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config"
    shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"
    return f"{config} and {shared}"


def _reason(exc: BotoCoreError) -> str:
    text = " ".join(str(exc.kwargs.get("error_msg") or "").split())
    return text[:MAX_REASON_CHARS] if text else ""


def credentials_failure(exc: BotoCoreError) -> FatalError | None:
    """Our one-line error for a botocore error that means no credentials can be had, else None."""
    profile, source = profile_in_use()
    named = f"profile {profile!r}" if source == "the default" else f"profile {profile!r} ({source})"
    if isinstance(exc, ProfileNotFound):
        missing = str(exc.kwargs.get("profile") or profile)
        return FatalError(
            f"the AWS profile {missing!r} named by {source} is not in {_config_files()}: "
            f"fix {source} or add the profile there (or unset {source} and set aws.access_key and "
            "aws.secret_access_key in config.json)"
        )
    if isinstance(exc, NoCredentialsError):
        return FatalError(
            f"no AWS credentials found (not in config.json, the environment, {named} in {_config_files()}, "
            f"nor an instance or container role): configure {named} {KEYS_HINT}"
        )
    if isinstance(exc, PartialCredentialsError):
        return FatalError(
            f"the AWS credentials from {exc.kwargs.get('provider', 'the credential chain')} lack "
            f"{exc.kwargs.get('cred_var', 'a part')}: complete them in {named} {KEYS_HINT}"
        )
    if isinstance(exc, (SSOError, TokenRetrievalError)):  # SSOTokenLoadError, UnauthorizedSSOTokenError
        reason = _reason(exc) or str(exc)[:MAX_REASON_CHARS]
        return FatalError(
            f"the AWS SSO login of {named} is missing or expired ({reason}): "
            f"run `aws sso login --profile {profile}` as the user the backup runs as, {KEYS_HINT}"
        )
    if isinstance(exc, CredentialRetrievalError):
        provider = str(exc.kwargs.get("provider") or "the credential chain")
        reason = _reason(exc) or "it failed without a message"
        what = "the credential_process" if provider == "custom-process" else provider
        return FatalError(
            f"AWS credentials could not be had from {what} of {named} ({reason}): "
            f"run it by hand as the user the backup runs as to see why, or fix the profile, {KEYS_HINT}"
        )
    return None
