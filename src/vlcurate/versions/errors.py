"""What can go wrong with a version store, as exceptions the CLI turns into one line each.

All are `ValueError`s so `cli.errors.user_errors` reports them without a traceback."""

from __future__ import annotations


class VersionError(ValueError):
    """Base of every version-store error."""


class UnknownVersionError(VersionError):
    """No version has this id or prefix."""


class AmbiguousVersionError(VersionError):
    """A prefix that matches more than one version."""


class CorruptVersionError(VersionError):
    """A version whose files are missing, altered or unreadable (hashes do not match)."""


class ConcurrentUpdateError(VersionError):
    """A ref moved while this commit was prepared (another writer won); nothing was changed."""


class StoreLockedError(VersionError):
    """Another writer held the store's lock for longer than the timeout."""


class AttachmentExistsError(VersionError):
    """An attachment of that name already exists with other content (attachments are immutable)."""


class MissingDataError(VersionError):
    """Data a version references (an image file) is gone; export stops rather than write a partial set."""


class SampleFormatError(VersionError):
    """Input samples that cannot be stored: no id, a duplicate id, content that is not JSON."""
