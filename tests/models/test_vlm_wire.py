"""The VLM client's server-free parts: images, JSON answers, Retry-After, cache keys and the cache file."""

from __future__ import annotations

import base64
import email.utils
import sqlite3
import time
from pathlib import Path

import pytest

from vlcurate.synth.scene import scene_from_seed
from vlcurate.vlm import prompts as vp
from vlcurate.vlm.cache import CACHE_FILE, ResponseCache
from vlcurate.vlm.client import SCHEMA_INSTRUCTION, VLMRequest, build_messages, cache_key, check_answer
from vlcurate.vlm.wire import ImageInputError, extract_json_object, prepare_image, retry_after_s


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ('{"answer": "3"}', {"answer": "3"}),
        ('```json\n{"answer": "3"}\n```', {"answer": "3"}),
        (
            'Sure! Here it is: {"answer": "3", "n": {"x": 1}} Hope this helps {"b": 2}',
            {"answer": "3", "n": {"x": 1}},
        ),
        ('{not json} then {"a": 1}', {"a": 1}),
        ("[1, 2, 3]", None),
        ("no json here", None),
        ("", None),
    ],
)
def test_extract_json_object(text: str, want: dict[str, object] | None) -> None:
    assert extract_json_object(text) == want


def test_check_answer_reports_where_and_why() -> None:
    ok, why = check_answer('{"reasoning": "r", "answer": "red"}', vp.COT_SCHEMA)
    assert ok == {"reasoning": "r", "answer": "red"} and why is None
    _, why = check_answer('{"reasoning": "r"}', vp.COT_SCHEMA)
    assert why is not None and "'answer' is a required property" in why
    _, why = check_answer('{"reasoning": "r", "answer": 3}', vp.COT_SCHEMA)
    assert why is not None and "at answer" in why
    _, why = check_answer("I think it is red.", vp.COT_SCHEMA)
    assert why is not None and why.startswith("answer is not JSON")


def test_prepare_image_kinds(tmp_path: Path) -> None:
    scene = scene_from_seed(0, 0)
    png, jpg = scene.encode("png"), scene.encode("jpg")
    a = prepare_image(png, 0, "data_url")
    assert a.url is not None and a.url.startswith("data:image/png;base64,")
    assert base64.b64decode(a.url.split(",", 1)[1]) == png
    assert prepare_image(jpg, 1, "url").url.startswith("data:image/jpeg;base64,")  # type: ignore[union-attr]
    path = tmp_path / "x.png"
    path.write_bytes(png)
    assert (
        prepare_image(str(path), 0, "data_url").key == a.key == prepare_image(f"file://{path}", 0, "url").key
    )
    remote = "https://example.com/a.png"
    assert prepare_image(remote, 0, "url").url == remote
    assert prepare_image(remote, 0, "data_url").url is None  # fetched by the client later
    assert prepare_image(remote, 0, "data_url").key == f"url:{remote}"
    with pytest.raises(ImageInputError, match=r"image 2 .*not a JPEG"):
        prepare_image(b"GIF? no", 2, "data_url")
    with pytest.raises(ImageInputError, match=r"image 0 .*empty"):
        prepare_image(b"", 0, "data_url")
    with pytest.raises(ImageInputError, match="no such file"):
        prepare_image(str(tmp_path / "missing.jpg"), 0, "data_url")


def test_retry_after_forms() -> None:
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (retry_after_s({"retry-after": date}) or 0) <= 31
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({}) is None


def test_messages_and_cache_key() -> None:
    req = VLMRequest(prompt="Describe.", images=[b"x"], system="Be brief.", json_schema=vp.COT_SCHEMA)
    msgs = build_messages(req, ["data:image/png;base64,AAAA"], schema_in_prompt=True)
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    parts = msgs[1]["content"]
    assert parts[0]["type"] == "image_url" and parts[1]["type"] == "text"
    assert SCHEMA_INSTRUCTION in parts[1]["text"] and '"reasoning"' in parts[1]["text"]
    assert build_messages(VLMRequest(prompt="Hi"), [], False) == [{"role": "user", "content": "Hi"}]
    k = cache_key("m", req, ["sha256:1"], {})
    assert k == cache_key("m", req.model_copy(), ["sha256:1"], {})
    assert k != cache_key("m2", req, ["sha256:1"], {})
    assert k != cache_key("m", req, ["sha256:2"], {})
    assert k != cache_key("m", req.model_copy(update={"temperature": 0.5}), ["sha256:1"], {})
    assert k != cache_key("m", req.model_copy(update={"json_schema": None}), ["sha256:1"], {})
    assert k != cache_key("m", req, ["sha256:1"], {"top_k": 5})
    assert cache_key("m", req, ["sha256:1"], {}, None) == k  # keys made before tags stay valid
    tagged = cache_key("m", req, ["sha256:1"], {}, "step-1000")
    assert tagged != k and tagged != cache_key("m", req, ["sha256:1"], {}, "step-2000")


def test_cache_survives_bad_rows_and_files(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)
    cache.put("a", {"texts": ["x"]})
    assert cache.get("a") == {"texts": ["x"]} and cache.get("b") is None
    cache._conn.execute("INSERT INTO responses VALUES ('bad', '{not json', 0)")
    assert cache.get("bad") is None and len(cache) == 1  # the bad row is dropped
    cache.close()
    (tmp_path / CACHE_FILE).write_bytes(b"\x00" * 5000)
    again = ResponseCache(tmp_path)
    assert again.rebuilt and len(again) == 0
    again.put("a", {"texts": ["y"]})
    assert again.get("a") == {"texts": ["y"]}
    again.close()
    with sqlite3.connect(tmp_path / CACHE_FILE) as conn:  # still a real SQLite file
        assert conn.execute("SELECT count(*) FROM responses").fetchone()[0] == 1
