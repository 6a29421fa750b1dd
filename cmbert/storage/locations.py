"""Where data lives: a local path or an ``s3://`` URI, resolved to a filesystem and a path on it.

- Endpoint and credentials come from the standard AWS environment (``AWS_ENDPOINT_URL[_S3]``,
  ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``/``AWS_DEFAULT_REGION``) or the AWS config
  files; they are never logged, never put in error messages and never written to metadata.
- ``filesystem``/``locate`` are the one way to get a filesystem object: one per (scheme, endpoint, region,
  credentials) in a process, cached, so the driver's many calls share one S3 client and its connections. It
  pickles with its endpoint and credentials, so Ray actors that get a ``Location`` need no AWS environment.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

from cmbert.errors import UserError
from cmbert.storage.secrets import redact


class StorageError(UserError, RuntimeError):
    """An I/O failure, phrased for a user in one line (never carries credentials)."""


@dataclass(frozen=True)
class Location:
    fs: pafs.FileSystem
    path: str  # filesystem path: "bucket/key" for S3, absolute for local
    uri: str  # as the user wrote it

    def join(self, *parts: str) -> "Location":
        path = posixpath.join(self.path, *parts)
        uri = self.uri.rstrip("/") + "/" + "/".join(parts)
        return Location(self.fs, path, uri)

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def has_folders(fs: pafs.FileSystem) -> bool:
    """Whether ``fs`` has real folders (local, shared mounts); S3 has none, and pyarrow would write empty marker
    objects for them."""
    return not isinstance(fs, pafs.S3FileSystem)


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def s3_filesystem() -> pafs.S3FileSystem:
    """The process's pyarrow S3 filesystem for the current AWS environment; fails fast on a dead endpoint."""
    key = None
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        key = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"],
               os.environ.get("AWS_SESSION_TOKEN") or None)
    return _s3_filesystem(s3_endpoint(), s3_region(), key)


@functools.lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str, key: tuple | None) -> pafs.S3FileSystem:
    kwargs: dict = {
        "region": region,
        "connect_timeout": 5,
        "request_timeout": 30,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    if key is not None:
        kwargs["access_key"], kwargs["secret_key"] = key[0], key[1]
        if key[2]:
            kwargs["session_token"] = key[2]
    return pafs.S3FileSystem(**kwargs)


_LOCAL = pafs.LocalFileSystem()


def filesystem(uri: str) -> pafs.FileSystem:
    """The filesystem ``uri`` lives on (S3 or local), the same object for every call with the same settings."""
    return s3_filesystem() if is_s3(uri) else _LOCAL


def locate(uri: "str | Location") -> Location:
    """Resolve a local path or ``s3://bucket/prefix`` to a filesystem and a path on it (a Location: itself)."""
    if isinstance(uri, Location):
        return uri
    uri = str(uri)
    if is_s3(uri):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise StorageError(f"bad S3 URI {uri!r}: expected s3://bucket/prefix")
        return Location(filesystem(uri), (parsed.netloc + parsed.path).rstrip("/"), uri.rstrip("/"))
    path = os.path.abspath(os.path.expanduser(uri))
    return Location(_LOCAL, path, uri)


def polars_storage_options(uri: str) -> dict | None:
    """``storage_options`` for ``polars.scan_parquet`` on the same S3 endpoint (None for local paths)."""
    if not is_s3(uri):
        return None
    opts = {"aws_region": s3_region()}
    endpoint = s3_endpoint()
    if endpoint:
        opts["aws_endpoint_url"] = endpoint
        if endpoint.startswith("http://"):
            opts["aws_allow_http"] = "true"
    for env, key in (
        ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
        ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
        ("AWS_SESSION_TOKEN", "aws_session_token"),
    ):
        if os.environ.get(env):
            opts[key] = os.environ[env]
    return opts


def explain(exc: BaseException, uri: str, action: str, endpoint: str | None = None) -> StorageError:
    """Turn a pyarrow/AWS error into one line a user can act on. Credentials never appear.

    ``endpoint``: the S3 endpoint for the message, as the driver saw it (a worker's environment may lack it)."""
    text = str(exc)
    low = text.lower()
    squashed = re.sub(r"[\s_\-]", "", low)  # ACCESS_DENIED, Access Denied, AccessDenied -> accessdenied
    where = f"{action} {uri}"
    if is_s3(uri):
        endpoint = endpoint or safe_endpoint()
        # curl 6/7/28: no host, no connection, timeout; 52/55/56: the server went away mid-request.
        if any(s in low for s in ("couldn't connect", "could not connect", "connection refused", "network_connection",
                                  "timed out", "resolve host", "connection reset", "broken pipe")) \
                or re.search(r"curlcode: (6|7|28|52|55|56)\b", low):
            return StorageError(redact(f"cannot {where}: S3 endpoint {endpoint} is unreachable"))
        denied = ("accessdenied", "invalidaccesskey", "signaturedoesnotmatch", "forbidden", "invalidtoken",
                  "expiredtoken")
        if any(s in squashed for s in denied) or re.search(r"\b403\b", low):
            return StorageError(redact(f"cannot {where}: access denied by S3 endpoint {endpoint}; "
                                       "check the AWS credentials"))
        # A 5xx: the server took the request and failed it (shutting down, overloaded); not the user's to fix.
        server = ("internalfailure", "internalerror", "serviceunavailable", "slowdown", "internalservererror")
        if any(s in squashed for s in server) or re.search(r"(http status|status code:?)\s*5\d\d\b", low):
            return StorageError(redact(f"cannot {where}: S3 endpoint {endpoint} failed the request with a server "
                                       "error; retry when it is healthy"))
        if "nosuchbucket" in squashed or "bucket does not exist" in low or re.search(r"bucket '[^']*' not found", low):
            return StorageError(redact(f"cannot {where}: bucket does not exist at S3 endpoint {endpoint}"))
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return StorageError(redact(f"cannot {where}: {first[:300]}"))


def safe_endpoint() -> str:
    """The S3 endpoint for messages, without any user:password@ part."""
    endpoint = s3_endpoint()
    if not endpoint:
        return "(default AWS endpoint)"
    parsed = urlparse(endpoint)
    if parsed.username or parsed.password:
        return endpoint.replace(parsed.netloc, parsed.hostname + (f":{parsed.port}" if parsed.port else ""))
    return endpoint


def require_shared(uri: str, timeout_s: float = 60.0) -> None:
    """On a Ray cluster of several nodes, refuse a local path that not every node sees, in one line, before work.

    S3 is shared by definition. For a path, the driver writes a probe file with a random token under it and a
    zero-CPU task pinned to every alive node reads it back: a filesystem every node mounts (NFS, Lustre, a
    cluster's shared volume) passes, a node-local disk fails. Without Ray, or on one node, there is nothing to
    check."""
    if is_s3(uri):
        return
    import ray

    if not ray.is_initialized():
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    loc = locate(uri)
    token = uuid.uuid4().hex
    probe = os.path.join(loc.path, f".cmbert-probe-{token}")
    try:
        os.makedirs(loc.path, exist_ok=True)
        with open(probe, "w") as f:
            f.write(token)
    except OSError as exc:
        raise explain(exc, uri, "write") from None

    @ray.remote(num_cpus=0, max_retries=0)
    def sees(path: str) -> str | None:
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return None

    try:
        refs = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(probe)
                for n in nodes]
        seen = ray.get(refs, timeout=timeout_s)
    finally:
        try:
            os.remove(probe)
        except OSError:
            pass
    blind = [n.get("NodeManagerAddress", n["NodeID"]) for n, s in zip(nodes, seen) if s != token]
    if blind:
        raise StorageError(f"output {uri} is a local path that node {blind[0]} of this {len(nodes)}-node Ray "
                           "cluster does not see: use s3://... or a filesystem every node mounts")
