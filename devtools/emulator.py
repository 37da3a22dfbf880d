"""A local AWS KMS emulator: a moto server in this process plus fast in-process seeding.

The server is moto's ``ThreadedMotoServer`` on 127.0.0.1 (an OS-assigned free port); clients reach
it over HTTP through ``AWS_ENDPOINT_URL`` (see :meth:`Emulator.env`). Seeding and state read-back
go straight to moto's backend objects, ``moto.kms.models.kms_backends[ACCOUNT_ID][REGION]``, which
the server thread shares because it runs in the same process: no HTTP, so 10,000 keys take about
a second and a half.

Facts this module relies on (moto 5.2.5, checked by ``tests/test_emulator.py``):

* KMS tags live in the KMS backend's ``tagger`` (keyed by bare key ID); the tagging API's
  GetResources reads them from there, so tags seeded in-process are visible over HTTP.
* ``Key.creation_date`` is a float of Unix seconds and DescribeKey returns it as-is, so
  overwriting it backdates ``CreationDate``.
* ``POST /moto-api/reset`` drops every backend; the next ``kms_backends[...]`` lookup builds a
  fresh one and re-registers it for GetResources. Never keep a backend object across a reset:
  :attr:`Emulator.backend` looks it up on every use.
* Every HTTP response carries a ``Date`` header (written by ``http.server``);
  :attr:`Emulator.clock_skew` shifts it to test the daemon's clock guard.
* moto's aliases carry no CreationDate / LastUpdatedDate, and moto enforces no key-state rules.

Patched here so that the emulator pages as AWS does (counting calls on it would otherwise
understate what an account-wide scan costs): GetResources pages hold ResourcesPerPage resources
(:func:`_pages_by_resources_per_page`), and ListAliases / ListKeys honour ``Limit`` and
``Marker`` (:func:`_pages_kms_lists`); Sign honours ``MessageType=DIGEST`` (:func:`_signs_digests`:
moto hashes the digest again, and a real SPIRE server then cannot make its CA); CreateKey without
``MultiRegion`` makes a single-Region key (:func:`_multi_region_defaults_to_false`: moto answers
``null``). With these a real spire-server runs against the emulator (tests/test_interop.py).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import re
import socket
import time
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils
from moto.core.base_backend import AccountSpecificBackend
from moto.core.exceptions import JsonRESTError
from moto.kms.exceptions import ValidationException
from moto.kms.models import Key, KmsBackend, kms_backends
from moto.kms.responses import KmsResponse
from moto.moto_server.werkzeug_app import MotoRequestHandler
from moto.resourcegroupstaggingapi.models import ResourceGroupsTaggingAPIBackend
from moto.server import ThreadedMotoServer

from daemon import spire
from devtools.service import Service

__all__ = ["ACCOUNT_ID", "REGION", "Emulator", "free_port"]

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"

# The key policy moto generates for every key without one; passing it precomputed skips a
# json.dumps per key while seeding (identical text, so identical behaviour).
_DEFAULT_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [
            {
                "Sid": "Enable IAM User Permissions",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"},
                "Action": "kms:*",
                "Resource": "*",
            }
        ],
    }
)

# What AWS (and moto's CreateAlias handler) accept for an alias name.
_ALIAS_RE = re.compile(r"alias/[a-zA-Z0-9/_-]+")
_ALIAS_MAX_LEN = 256


def _pages_by_resources_per_page() -> None:
    """Make GetResources pages hold ResourcesPerPage resources, as AWS documents.

    moto also cuts a page at its default TagsPerPage of 100 tags, so a page of SPIRE keys (five
    tags each) holds 19 of them, where AWS returns up to ResourcesPerPage (1 to 100). Counting
    pages on the emulator would otherwise overstate the daemon's GetResources calls fivefold.
    A request naming another TagsPerPage keeps it (an explicit 100 cannot be told apart).
    """
    original = ResourceGroupsTaggingAPIBackend.get_resources
    if getattr(original, "_pages_by_resources", False):
        return

    def get_resources(self: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("tags_per_page", 100) == 100:  # moto's default, not the caller's
            kwargs["tags_per_page"] = 1_000_000
        return original(self, *args, **kwargs)

    get_resources._pages_by_resources = True  # type: ignore[attr-defined]
    ResourceGroupsTaggingAPIBackend.get_resources = get_resources  # type: ignore[method-assign]


_pages_by_resources_per_page()


class _InvalidMarkerException(JsonRESTError):
    code = 400

    def __init__(self) -> None:
        super().__init__("InvalidMarkerException", "The marker is not valid.")


# What a marker may decode to: the last AliasName, or KeyId, of the page that issued it.
_KEY_ID_RE = re.compile(r"[A-Za-z0-9-]+")


def _pages_kms_lists() -> None:
    """Make ListAliases and ListKeys honour ``Limit`` and ``Marker``, as AWS documents.

    moto ignores both and answers every alias (or key) of the account in one page, so counting
    calls on the emulator would understate an account-wide scan. AWS answers ListAliases in pages
    of ``Limit`` 1 to 100 aliases (50 when absent) and ListKeys in pages of 1 to 1000 keys (100),
    with ``Truncated`` and, only when truncated, the ``NextMarker`` to pass as the next ``Marker``.

    The entries are whatever moto answers (with or without ``KeyId``; the reserved
    ``alias/aws/...`` aliases included), ordered by AliasName / KeyId. A marker is the last name
    of its page, base64-encoded (as the fault proxy's ``alias_paging`` does), so an alias created,
    retargeted or deleted between two pages neither repeats nor hides another one. A ``Limit`` out
    of range fails with ``ValidationException`` and a marker this never issued with
    ``InvalidMarkerException``, before moto's handler runs (its own errors, such as an unknown
    ``KeyId``, come after, as on AWS).
    """
    _page_operation("list_aliases", "Aliases", "AliasName", _ALIAS_RE, default=50, maximum=100)
    _page_operation("list_keys", "Keys", "KeyId", _KEY_ID_RE, default=100, maximum=1000)


def _page_operation(
    name: str, entries: str, by: str, marker_shape: re.Pattern[str], *, default: int, maximum: int
) -> None:
    """Wrap ``KmsResponse.<name>`` (once) to cut its one-page answer to the request's page."""
    original = getattr(KmsResponse, name)
    if getattr(original, "_pages_like_aws", False):
        return

    def paged(self: KmsResponse) -> str:
        limit = _limit(self._get_param("Limit"), default, maximum)
        after = _after(self._get_param("Marker"), marker_shape)
        data = json.loads(original(self))
        listed = sorted(data.get(entries) or [], key=lambda entry: str(entry[by]))
        if after is not None:
            listed = [entry for entry in listed if str(entry[by]) > after]
        data[entries] = listed[:limit]
        data["Truncated"] = len(listed) > limit
        data.pop("NextMarker", None)
        if data["Truncated"]:
            last = str(listed[limit - 1][by])
            data["NextMarker"] = base64.urlsafe_b64encode(last.encode()).decode()
        return json.dumps(data)

    paged._pages_like_aws = True  # type: ignore[attr-defined]
    paged.__doc__ = original.__doc__
    setattr(KmsResponse, name, paged)


def _limit(limit: Any, default: int, maximum: int) -> int:
    """The page size a request asks for, or ValidationException (as AWS words it)."""
    if limit is None:
        return default
    if isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit <= maximum:
        return limit
    bound = (
        "greater than or equal to 1"
        if isinstance(limit, int) and limit < 1
        else f"less than or equal to {maximum}"
    )
    raise ValidationException(
        f"1 validation error detected: Value '{limit}' at 'limit' failed to satisfy "
        f"constraint: Member must have value {bound}"
    )


def _after(marker: Any, shape: re.Pattern[str]) -> str | None:
    """The name a request's Marker continues after (None: the first page)."""
    if marker is None:
        return None
    try:
        after = base64.b64decode(str(marker).encode(), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _InvalidMarkerException() from None
    if not shape.fullmatch(after):
        raise _InvalidMarkerException()
    return after


_pages_kms_lists()


_DIGEST_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}


def _signs_digests() -> None:
    """Make Sign honour ``MessageType=DIGEST``, as AWS documents.

    moto ignores ``MessageType`` and hashes the message again, so a signature over a digest is a
    signature over the digest's digest. SPIRE signs digests (Go's crypto.Signer), and Go's
    x509.CreateCertificate verifies the signature it gets back: against moto, SPIRE cannot make
    its CA. Here a DIGEST message is signed as it is, prehashed with the algorithm's hash; its
    length must be that hash's (``ValidationException`` otherwise, as on AWS); RSASSA-PSS uses a
    salt as long as the digest, as KMS does. RAW messages go to moto's handler unchanged.
    """
    moto_sign = KmsResponse.sign

    def sign(self: KmsResponse) -> str:
        if self._get_param("MessageType") != "DIGEST":
            return str(moto_sign(self))
        key_id = self._get_param("KeyId")
        self._validate_key_id(key_id)
        digest = self._get_param("Message") or b""
        algorithm = str(self._get_param("SigningAlgorithm") or "")
        key = self.kms_backend.describe_key(key_id)
        if key.key_usage != "SIGN_VERIFY" or algorithm not in key.signing_algorithms:
            return str(moto_sign(self))  # moto's own validation errors
        hash_algorithm = _DIGEST_HASHES[algorithm.rsplit("_", 1)[1]]()
        if len(digest) != hash_algorithm.digest_size:
            raise ValidationException(f"Digest is invalid length for algorithm {algorithm}.")
        prehashed = asym_utils.Prehashed(hash_algorithm)
        private = key.private_key.private_key  # type: ignore[attr-defined]  # moto's wrapper
        if algorithm.startswith("ECDSA"):
            signature = private.sign(digest, ec.ECDSA(prehashed))
        elif algorithm.startswith("RSASSA_PSS"):
            pss = padding.PSS(
                mgf=padding.MGF1(hash_algorithm), salt_length=hash_algorithm.digest_size
            )
            signature = private.sign(digest, pss, prehashed)
        else:
            signature = private.sign(digest, padding.PKCS1v15(), prehashed)
        return json.dumps(
            {
                "KeyId": key.arn,
                "Signature": base64.b64encode(signature).decode(),
                "SigningAlgorithm": algorithm,
            }
        )

    KmsResponse.sign = sign  # type: ignore[method-assign]


_signs_digests()


def _multi_region_defaults_to_false() -> None:
    """Make a CreateKey without ``MultiRegion`` make a single-Region key, as AWS does.

    moto's handler passes the absent parameter on as None, and DescribeKey then answers
    ``"MultiRegion": null``: a key whose shape is unknown, which the daemon never treats as
    SPIRE's. The Go SDK (a real SPIRE server) leaves the parameter out.
    """
    moto_create = KmsBackend.create_key

    def create_key(
        self: KmsBackend,
        policy: str | None,
        key_usage: str,
        key_spec: str,
        description: str,
        tags: list[dict[str, str]] | None,
        multi_region: bool | None = False,
        origin: str = "AWS_KMS",
    ) -> Key:
        return moto_create(
            self, policy, key_usage, key_spec, description, tags, bool(multi_region), origin
        )

    KmsBackend.create_key = create_key  # type: ignore[method-assign]


_multi_region_defaults_to_false()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (for servers other than moto)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _without_profile() -> Iterator[None]:
    """Hide AWS_PROFILE/AWS_DEFAULT_PROFILE: moto's botocore session fails on an unknown profile."""
    saved = {
        name: os.environ.pop(name)
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE")
        if name in os.environ
    }
    try:
        yield
    finally:
        os.environ.update(saved)


class Emulator(Service):
    """A moto server in this process (ThreadedMotoServer on 127.0.0.1, a free port) plus
    in-process seeding through moto's backend.

    Use as a context manager or call :meth:`start` / :meth:`stop`. Only one Emulator should run
    per process: moto's backends are process-global, so two would share (and reset) one state.
    """

    def __init__(self) -> None:
        self._server: ThreadedMotoServer | None = None
        self._endpoint_url: str | None = None
        self._foreign_seq = 0
        #: Shifts the ``Date`` header of every HTTP response (AWS's clock as the daemon sees it).
        #: :meth:`reset` sets it back to zero.
        self.clock_skew = timedelta(0)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the moto server (no-op when already running)."""
        if self._server is not None:
            return
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        with _without_profile():
            # moto builds one botocore Session (cached) to list regions; build it now, while no
            # AWS_PROFILE can break it, instead of inside the first request.
            session = AccountSpecificBackend.get_session()
            session.get_available_partitions()
            session.get_available_regions("kms")
        # Port 0: the OS picks a free port at bind time, so there is no race with other processes.
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        # Serve with a handler whose Date header honours clock_skew. socketserver reads
        # RequestHandlerClass per request, and nothing has been served yet.
        wsgi_server = server._server  # moto 5.2.5 exposes no other hook
        assert wsgi_server is not None
        wsgi_server.RequestHandlerClass = self._handler_class()
        host, port = server.get_host_and_port()
        self._server = server
        self._endpoint_url = f"http://{host}:{port}"

    def stop(self) -> None:
        """Stop the server (no-op when not running). moto's in-memory state is left as it is."""
        server, self._server = self._server, None
        self._endpoint_url = None
        if server is not None:
            server.stop()

    def reset(self) -> None:
        """Clear all moto state (``POST /moto-api/reset``) and the clock skew."""
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset", data=b"", method="POST"
        )
        # An explicit empty ProxyHandler: never send this to an HTTP(S)_PROXY from the environment.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            if response.status != 200:
                raise RuntimeError(f"moto reset failed: HTTP {response.status}")
        self.clock_skew = timedelta(0)
        self._foreign_seq = 0

    def env(self) -> dict[str, str]:
        """Environment for code that builds AWS clients from the standard configuration.

        Callers that merge it into an existing environment should also drop ``AWS_PROFILE`` (and
        ideally every other ``AWS_*`` variable, e.g. ``AWS_ENDPOINT_URL_KMS`` would win over
        ``AWS_ENDPOINT_URL``), as the ``aws`` test fixture does.
        """
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    # ------------------------------------------------------------------ seeding (in-process)

    @property
    def backend(self) -> KmsBackend:
        """moto's KMS backend for ACCOUNT_ID/REGION, looked up afresh (a reset replaces it)."""
        return kms_backends[ACCOUNT_ID][REGION]

    def create_key(
        self,
        *,
        tags: Mapping[str, str] | None = None,
        description: str = "",
        key_spec: str = "ECC_NIST_P256",
        created_at: datetime | None = None,
        key_usage: str = "SIGN_VERIFY",
        multi_region: bool = False,
    ) -> str:
        """Create a key (SIGN_VERIFY unless told otherwise) and return its ARN.

        ``created_at`` (timezone-aware) backdates the key's CreationDate. Keep the default key
        spec: SYMMETRIC_DEFAULT and RSA keys cost ~30 ms of key generation each.
        """
        return self._create_key(
            tags=tags,
            description=description,
            key_spec=key_spec,
            created_at=created_at,
            key_usage=key_usage,
            multi_region=multi_region,
        ).arn

    def create_alias(self, alias_name: str, key_arn: str) -> None:
        """Point a new alias at a key (ARN or key ID), validated as AWS's CreateAlias would."""
        if not _ALIAS_RE.fullmatch(alias_name) or len(alias_name) > _ALIAS_MAX_LEN:
            raise ValueError(
                f"invalid alias name {alias_name!r}: AWS requires 'alias/' followed by "
                "[a-zA-Z0-9/_-]+, at most 256 characters"
            )
        if alias_name.startswith("alias/aws/"):
            raise ValueError(f"invalid alias name {alias_name!r}: alias/aws/ is reserved for AWS")
        if self.alias_target(alias_name) is not None:
            raise ValueError(f"alias {alias_name!r} already exists")
        backend = self.backend
        backend.create_alias(self._key(key_arn, backend).id, alias_name)

    def spire_key(
        self,
        trust_domain: str,
        server_id: str,
        key_id: str,
        *,
        last_update: int | None,
        active: str | None = "true",
        alias: bool = True,
        tagged: bool = True,
        created_at: datetime | None = None,
        extra_tags: Mapping[str, str] | None = None,
    ) -> str:
        """Create a key as a SPIRE server does and return its ARN.

        Description ``SPIRE_SERVER_KEY/<sanitized td>/<key id>``, ECC_NIST_P256, SIGN_VERIFY.
        When ``tagged``: the five SPIRE tags, leaving out ``spire-last-update`` when
        ``last_update`` is None and ``spire-active`` when ``active`` is None. ``extra_tags`` are
        applied last (also when not ``tagged``), so they can add tags (``spire-protect``) or
        override a SPIRE tag with a malformed value. When ``alias``: SPIRE's alias points to it.
        """
        tags: dict[str, str] = {}
        if tagged:
            tags[spire.TAG_TRUST_DOMAIN] = trust_domain
            tags[spire.TAG_SERVER_ID] = server_id
            if active is not None:
                tags[spire.TAG_ACTIVE] = active
            tags[spire.TAG_KEY_ID] = key_id
            if last_update is not None:
                tags[spire.TAG_LAST_UPDATE] = spire.format_last_update(last_update)
        if extra_tags:
            tags.update(extra_tags)
        arn = self.create_key(
            tags=tags,
            description=spire.key_description(trust_domain, key_id),
            key_spec="ECC_NIST_P256",
            created_at=created_at,
        )
        if alias:
            self.create_alias(spire.alias_name(trust_domain, server_id, key_id), arn)
        return arn

    def foreign_keys(self, n: int, *, aliases_every: int = 5) -> None:
        """Create ``n`` keys that belong to nobody SPIRE knows.

        Key i (counted across calls since the last reset) gets the description
        ``foreign key <i>``; every other one is tagged ``team=x``; every ``aliases_every``-th
        (i % aliases_every == 0; 0 turns it off) gets the alias ``alias/team-<i>``.
        """
        backend = self.backend
        start, self._foreign_seq = self._foreign_seq, self._foreign_seq + n
        for i in range(start, start + n):
            key = self._create_key(
                tags={"team": "x"} if i % 2 == 0 else None,
                description=f"foreign key {i}",
                key_spec="ECC_NIST_P256",
                created_at=None,
                backend=backend,
            )
            if aliases_every and i % aliases_every == 0:
                backend.create_alias(key.id, f"alias/team-{i}")

    # ------------------------------------------------------------------ reading state (in-process)

    def tags(self, key_arn: str) -> dict[str, str]:
        """The key's tags (ARN or key ID)."""
        backend = self.backend
        return dict(backend.tagger.get_tag_dict_for_resource(self._key(key_arn, backend).id))

    def key_state(self, key_arn: str) -> str:
        """``Enabled``, ``Disabled``, ``PendingDeletion``… (ARN or key ID)."""
        return str(self._key(key_arn).key_state)

    def alias_target(self, alias_name: str) -> str | None:
        """The bare key ID the alias points to, or None when there is no such alias."""
        for key in list(self.backend.keys.values()):
            if alias_name in key.aliases:
                return str(key.id)
        return None

    def all_keys(self) -> list[str]:
        """ARNs of every key, in creation order."""
        return [key.arn for key in list(self.backend.keys.values())]

    # ------------------------------------------------------------------ internals

    def _create_key(
        self,
        *,
        tags: Mapping[str, str] | None,
        description: str,
        key_spec: str,
        created_at: datetime | None,
        backend: KmsBackend | None = None,
        key_usage: str = "SIGN_VERIFY",
        multi_region: bool = False,
    ) -> Key:
        backend = backend or self.backend
        key = backend.create_key(
            policy=_DEFAULT_POLICY,
            key_usage=key_usage,
            key_spec=key_spec,
            description=description,
            tags=[{"TagKey": k, "TagValue": v} for k, v in tags.items()] if tags else None,
            multi_region=multi_region,
        )
        if created_at is not None:
            if created_at.tzinfo is None or created_at.utcoffset() is None:
                raise ValueError("created_at must be timezone-aware (e.g. tzinfo=timezone.utc)")
            key.creation_date = created_at.timestamp()
        return key

    def _key(self, key_arn: str, backend: KmsBackend | None = None) -> Key:
        backend = backend or self.backend
        key_id = backend.get_key_id(key_arn)
        try:
            return backend.keys[key_id]
        except KeyError:
            raise KeyError(f"no such key in the emulator: {key_arn}") from None

    def _handler_class(self) -> type[MotoRequestHandler]:
        emulator = self

        class _SkewedDateHandler(MotoRequestHandler):
            def date_time_string(self, timestamp: Any = None) -> str:
                if timestamp is None:
                    timestamp = time.time() + emulator.clock_skew.total_seconds()
                return str(super().date_time_string(timestamp))

        return _SkewedDateHandler
