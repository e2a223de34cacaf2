"""Search by words through the HTTP face: /v1/collections/{c}/search with a
text alone, before a gateway whose embedder has a text side."""

from __future__ import annotations

import requests

from tests.web.conftest import Web


def test_the_json_api_searches_by_words(words_web: Web) -> None:
    url = f"{words_web.url}/v1/collections/clothes/search"
    reply = requests.post(url, data={"text": "sneakers", "top_k": "8"}, timeout=60)
    assert reply.status_code == 200, reply.text
    hits = reply.json()["hits"]
    assert len(hits) == 8 and sum("/Shoes/" in h["path"] for h in hits) >= 6, hits
    assert all(isinstance(h["image_id"], str) for h in hits)  # int64 as decimal strings
    nothing = requests.post(url, data={"top_k": "8"}, timeout=60)
    assert nothing.status_code == 400 and "text alone" in nothing.json()["detail"]
    empty = requests.post(url, data={"text": "   "}, timeout=60)
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]
    listed = requests.get(f"{words_web.url}/v1/collections", timeout=60).json()["collections"]
    assert {c["name"]: c["words"] for c in listed}["clothes"] is True
    gone = requests.post(
        f"{words_web.url}/v1/collections/nothing_here/search", data={"text": "hat"}, timeout=60
    )
    assert gone.status_code == 404
