"""The one canonical instruction sample every format reads into and writes out of.

Trainers disagree on field names (LLaVA `conversations`/`from`/`value`, OpenAI `messages`/`role`/
`content`, HF datasets `Image` columns) but agree on the substance: some images, a conversation in
which each image is referred to by an `<image>` placeholder, and free extra fields. Keeping one
model means every operator and writer sees the same thing, and a round trip through any format
keeps every field (`meta` holds whatever the format had besides images and conversation).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vlcurate.base.records import derive_uid, normalize_uid

IMAGE_TOKEN = "<image>"
USER, ASSISTANT, SYSTEM = "user", "assistant", "system"


class Message(BaseModel):
    """One turn: `role` is user, assistant or system (other roles, e.g. tool outputs, are kept as is)."""

    model_config = ConfigDict(frozen=True)
    role: str
    content: str


class ImageData(BaseModel):
    """An image as a reference (`path`: a path or URL as written, resolved later) and/or its bytes."""

    path: str | None = None
    data: bytes | None = Field(default=None, repr=False)


class InstructSample(BaseModel):
    """A sample: `id` as the dataset wrote it (or a stable hash), images, messages and extra fields.

    Messages refer to images with `<image>` placeholders, one per image, in image order.
    """

    id: str
    images: list[ImageData] = Field(default_factory=list)
    messages: list[Message]
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def uid(self) -> str:
        """The 32-hex uid vlcurate keys everything by: the id itself when it is one, else its hash."""
        return normalize_uid(self.id) or derive_uid(f"instruct-id:{self.id}", None)

    def placeholder_count(self) -> int:
        return sum(m.content.count(IMAGE_TOKEN) for m in self.messages)

    def placeholder_error(self) -> str | None:
        """Why placeholders and images disagree, or None when each image has exactly one placeholder."""
        n_tokens, n_images = self.placeholder_count(), len(self.images)
        if n_tokens == n_images:
            return None
        return (
            f"sample {self.id!r}: {n_tokens} {IMAGE_TOKEN} placeholder(s) but {n_images} image(s); "
            f"each image needs exactly one placeholder"
        )


def stable_id(images: list[str | None], messages: list[dict[str, Any]]) -> str:
    """An id for a sample that has none: a hash of its image references and conversation (16 hex)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(json.dumps([images, messages], sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


def strip_placeholders(text: str) -> str:
    """The text of a turn without its `<image>` placeholders and the blank space they leave (lines kept:
    option lists are one per line)."""
    lines = (" ".join(line.split()) for line in text.replace(IMAGE_TOKEN, " ").splitlines())
    return "\n".join(line for line in lines if line)
