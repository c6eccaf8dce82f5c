"""Object-storage failures as one line each: what failed, where, and what to do about it."""

from __future__ import annotations

from ..errors import TilewiseError


class StorageError(TilewiseError):
    """Object storage refused or failed a request: no such bucket or key, access denied, no credentials, an
    endpoint that does not answer."""


#: botocore's exception class names, and what they mean to the user.
_BOTOCORE = {
    "NoCredentialsError": "no credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
    "PartialCredentialsError": "incomplete credentials for {where}: {detail}",
    "EndpointConnectionError": "cannot reach the storage endpoint for {where}: {detail}",
    "ConnectTimeoutError": "the storage endpoint for {where} did not answer: {detail}",
    "ReadTimeoutError": "the storage endpoint for {where} stopped answering: {detail}",
    "ClientConnectorError": "cannot reach the storage endpoint for {where}: {detail}",
}


def storage_error(exc: BaseException, where: str) -> TilewiseError:
    """The one-line error for ``exc``, raised by a storage request about ``where``."""
    if isinstance(exc, TilewiseError):
        return exc
    detail = " ".join(str(exc).split()) or type(exc).__name__
    for cls in type(exc).__mro__:
        template = _BOTOCORE.get(cls.__name__)
        if template:
            return StorageError(template.format(where=where, detail=detail))
    if isinstance(exc, FileNotFoundError):
        if "bucket" in detail.lower():
            return StorageError(f"{where}: no such bucket ({detail})")
        return StorageError(f"{where} does not exist")
    if isinstance(exc, PermissionError):
        return StorageError(f"access denied to {where} ({detail})")
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        inner = storage_error(cause, where)
        if isinstance(inner, StorageError) and "failed" not in str(inner):
            return inner
    return StorageError(f"storage request for {where} failed: {detail}")
