"""Every filesystem touch of cmbert: local paths and ``s3://`` URIs, one package.

- ``locations``: ``Location``, ``locate``/``filesystem`` (the one, cached, way to get a filesystem object),
  S3 settings from the standard AWS environment, one-line error messages (``explain``), ``require_shared``.
- ``datasets``: Parquet datasets with declared schemas (``conform``), staged writes and publishing, reads.
- ``blobs``: files that are not datasets: bytes, JSON, a folder copied (``copy_tree``), the one listing
  (``list_files``), a cached local copy of a remote folder.
- ``secrets``: credentials never reach metadata or messages.

Callers use ``from cmbert import storage`` and ``storage.X``; the submodules are the map, not the API.
"""

import pyarrow.fs as pafs  # noqa: F401  (tests reach pyarrow's filesystem classes as storage.pafs)

from cmbert.storage.blobs import (copy_tree, exists, json_text, list_files, local_copy, read_bytes, read_json,
                                  remove_tree, scratch_dir, sha256, write_bytes, write_json)
from cmbert.storage.datasets import (STAGING_DIR, SchemaMismatchError, check_written_version, conform,
                                     dataset_exists, distinct_tuples, new_staging_uri, partition_segment,
                                     publish_dir, publish_file, read_file, read_table, remove_quietly, schema_name,
                                     staging_location, write_staged, write_table, written_version)
from cmbert.storage.locations import (Location, StorageError, explain, filesystem, has_folders, is_s3, locate,
                                      polars_storage_options, require_shared, s3_endpoint, s3_filesystem, s3_region,
                                      safe_endpoint)
from cmbert.storage.secrets import SECRET_ENV, SECRET_KEY_RE, is_secret_key, redact, safe_metadata

__all__ = [
    "Location", "SECRET_ENV", "SECRET_KEY_RE", "STAGING_DIR", "SchemaMismatchError", "StorageError",
    "check_written_version", "conform", "copy_tree", "dataset_exists", "distinct_tuples", "exists", "explain",
    "filesystem", "has_folders", "is_s3", "is_secret_key", "json_text", "list_files", "local_copy", "locate",
    "new_staging_uri", "partition_segment", "polars_storage_options", "publish_dir", "publish_file", "read_bytes",
    "read_file", "read_json", "read_table", "redact", "remove_quietly", "remove_tree", "require_shared",
    "s3_endpoint", "s3_filesystem", "s3_region", "safe_endpoint", "safe_metadata", "schema_name", "scratch_dir",
    "sha256", "staging_location", "write_bytes", "write_json", "write_staged", "write_table", "written_version",
]
