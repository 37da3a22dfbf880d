"""Typed errors for AWS failures, translated from botocore's exceptions."""

from __future__ import annotations

import re

from botocore.exceptions import BotoCoreError, ClientError

_NOT_AUTHORIZED = re.compile(
    r"(?:User|Principal):?\s+(?P<principal>arn:[^\s]+)\s+is not authorized to perform:?\s+"
    r"(?P<action>[A-Za-z0-9-]+:[A-Za-z0-9*]+)"
)
_XML_MESSAGE = re.compile(r"<Message>(?P<message>.*?)</Message>", re.DOTALL)
_XML_CODE = re.compile(r"<Code>(?P<code>.*?)</Code>", re.DOTALL)

_ACCESS_DENIED_CODES = {"AccessDeniedException", "AccessDenied", "UnauthorizedOperation"}
_THROTTLE_CODES = {
    "ThrottlingException",
    "ThrottledException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "LimitExceededException",
}
_NOT_FOUND_CODES = {"NotFoundException"}
_INVALID_STATE_CODES = {"KMSInvalidStateException"}
_SIGNATURE_CODES = {"InvalidSignatureException", "SignatureDoesNotMatch", "RequestExpired"}
_SIGNING_TIME = re.compile(r"Signature expired|not yet current|RequestTimeTooSkewed|expired", re.I)

#: IAM action of each operation the daemon calls.
IAM_ACTIONS = {
    "GetResources": "tag:GetResources",
    "TagResources": "tag:TagResources",
    "ListAliases": "kms:ListAliases",
    "DescribeKey": "kms:DescribeKey",
    "ListResourceTags": "kms:ListResourceTags",
    "TagResource": "kms:TagResource",
    "UpdateAlias": "kms:UpdateAlias",
    "ScheduleKeyDeletion": "kms:ScheduleKeyDeletion",
}


class AwsError(Exception):
    """An AWS call failed; ``code`` is AWS's error code."""

    def __init__(self, operation: str, code: str, message: str) -> None:
        self.operation = operation
        self.code = code
        self.message = message
        super().__init__(f"{operation}: {code}: {message}")


class AccessDenied(AwsError):
    """The caller lacks an IAM permission."""

    def __init__(
        self, operation: str, code: str, message: str, action: str, principal: str | None
    ) -> None:
        super().__init__(operation, code, message)
        self.action = action
        self.principal = principal

    def explain(self) -> str:
        """Say which permission is missing, who lacks it and how to fix it."""
        who = self.principal or "the daemon's AWS principal"
        if self.operation == "GetResources":
            return (
                'tag-based key discovery requires the "tag:GetResources" permission in an '
                "identity-based IAM policy (it cannot be granted through the KMS key policy); "
                f'attach an IAM policy allowing tag:GetResources on Resource "*" to {who}. '
                "SPIRE's own plugin says the same of its role: grant the permission or disable "
                "enable_tag_based_key_discovery (turning it off on the SPIRE side only spares "
                "SPIRE the permission: this daemon finds SPIRE's keys by their tags and always "
                f"needs it): {self.code}: {self.message}"
            )
        return (
            f'{self.operation} was denied: grant "{self.action}" to {who} in its IAM policy '
            f"(or in the KMS key policy for kms: actions): {self.code}: {self.message}"
        )


class Throttled(AwsError):
    """AWS throttled the call and botocore's retries did not get it through."""


class NotFound(AwsError):
    """The key or alias does not exist."""


class InvalidState(AwsError):
    """The key's state forbids the operation (for example, it is pending deletion)."""


class Held(AwsError):
    """A mutating call that was not sent: the daemon stopped writing (``message`` says why)."""


class Stopping(Held):
    """The daemon is stopping: no new mutating call is sent."""


class Unavailable(AwsError):
    """AWS could not be reached or answered with a server error."""


class ClockSkewed(AwsError):
    """AWS refused the request's signing time: this host's clock is more than 5 minutes off."""

    def __str__(self) -> str:
        return (
            f"{self.operation}: AWS refused the request's signing time (SigV4 allows 5 minutes): "
            "this host's clock is off; fix its time synchronisation (timedatectl, chronyc "
            f"tracking). Nothing was sent to act on: {self.code}: {self.message}"
        )


def _plain(message: str) -> str:
    match = _XML_MESSAGE.search(message)
    return match.group("message").strip() if match else message


def translate(operation: str, exc: ClientError | BotoCoreError) -> AwsError:
    """Turn a botocore exception into one of ours, keeping AWS's code and message."""
    if isinstance(exc, BotoCoreError):
        return Unavailable(operation, type(exc).__name__, str(exc))
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or "Unknown")
    message = str(error.get("Message") or "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code.isdigit():
        # Some emulators answer a JSON-protocol client with an XML error body.
        xml_code = _XML_CODE.search(message)
        if xml_code:
            code = xml_code.group("code").strip()
        message = _plain(message)
    if code in _ACCESS_DENIED_CODES or status == 403:
        found = _NOT_AUTHORIZED.search(message)
        action = found.group("action") if found else IAM_ACTIONS.get(operation, operation)
        principal = found.group("principal") if found else None
        return AccessDenied(operation, code, message, action, principal)
    if code in _SIGNATURE_CODES and _SIGNING_TIME.search(message):
        return ClockSkewed(operation, code, message)
    if code in _THROTTLE_CODES or status == 429:
        return Throttled(operation, code, message)
    if code in _NOT_FOUND_CODES:
        return NotFound(operation, code, message)
    if code in _INVALID_STATE_CODES:
        return InvalidState(operation, code, message)
    if isinstance(status, int) and status >= 500:
        return Unavailable(operation, code, message)
    return AwsError(operation, code, message)
