"""Object-storage settings of a process, translated once from the standard AWS environment.

Credentials are never tilewise's: GDAL, s3fs and botocore each read ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``AWS_REGION`` (and the profile files)
themselves. Only the endpoint of an S3-compatible store (MinIO, Ceph, a test server) needs translating:
botocore and s3fs take ``AWS_ENDPOINT_URL`` as it is, GDAL wants ``AWS_S3_ENDPOINT`` (host:port, no scheme),
``AWS_HTTPS`` and ``AWS_VIRTUAL_HOSTING``. GDAL reads its settings from the process environment, so they are
set there, in the client and in every worker process (``StorageSettings.apply``, carried by the readers, which
apply them where they land). Settings the user gave GDAL explicitly are left alone.

Retries: GDAL retries HTTP 429/5xx ``GDAL_HTTP_MAX_RETRY`` times (set here to 3 unless given) with a first
pause of ``GDAL_HTTP_RETRY_DELAY`` s, doubling; s3fs/botocore follow ``AWS_MAX_ATTEMPTS`` and
``AWS_RETRY_MODE``. An endpoint that does not answer fails after ``GDAL_HTTP_CONNECTTIMEOUT`` (set here to
10 s) for GDAL and botocore's connect timeout for s3fs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

#: GDAL settings every remote read gets unless the environment already sets them: no listing of the "folder"
#: of a file on open (a bucket can hold millions of keys), a bounded retry and connection timeout.
GDAL_DEFAULTS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_TIMEOUT": "60",
    # GDAL merges neighbouring ranges of one read into one request; this lets a COG's header come in one.
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
}


#: What ``apply`` set in this process: a value still equal to it is tilewise's, not the user's, and may change
#: with the endpoint (a notebook that switches stores).
_APPLIED: dict[str, str] = {}


def _user_set(key: str, env: Mapping[str, str]) -> bool:
    return key in env and env[key] != _APPLIED.get(key)


@dataclass(frozen=True)
class StorageSettings:
    """The GDAL settings of a process for object storage (picklable, so readers carry them to workers)."""

    gdal: tuple[tuple[str, str], ...]
    #: ``AWS_ENDPOINT_URL`` where it was read, for s3fs/botocore in processes that lack it (a remote worker).
    endpoint: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> StorageSettings:
        env = os.environ if environ is None else environ
        options = dict(GDAL_DEFAULTS)
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
            options["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
            options["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
            # A custom endpoint addresses buckets by path (http://host/bucket/key): MinIO and test servers have
            # no wildcard DNS for bucket.host.
            options["AWS_VIRTUAL_HOSTING"] = "FALSE"
        gdal = tuple(sorted((k, v) for k, v in options.items() if not _user_set(k, env)))
        return cls(gdal, env.get("AWS_ENDPOINT_URL"))

    def apply(self) -> None:
        """Set the settings in this process's environment (where GDAL reads them), each unless the user set it."""
        endpoint = (("AWS_ENDPOINT_URL", self.endpoint),) if self.endpoint else ()
        for key, value in (*self.gdal, *endpoint):
            if not _user_set(key, os.environ):
                os.environ[key] = _APPLIED[key] = value

    def as_dict(self) -> dict[str, str]:
        return dict(self.gdal)
