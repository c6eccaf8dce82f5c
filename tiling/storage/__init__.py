"""Object storage: names (``StoragePath``), the process's GDAL settings for it, and its errors."""

from .errors import StorageError, storage_error
from .location import StoragePath, filesystem, is_remote
from .settings import StorageSettings

__all__ = ["StorageError", "StoragePath", "StorageSettings", "filesystem", "is_remote", "storage_error"]
