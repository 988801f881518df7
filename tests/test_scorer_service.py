"""The scorer as a real uvicorn service on loopback, reached through the real client."""

import json
import threading
import time

import httpx
import pytest

from harness.errors import ScorerUnavailable, UserError
from harness.run import make_scorer
from harness.scoring import ScorerSpec
from harness.scoring.builtin import BuiltinScorer
from scorer.server import create_app
from scorer.service_config import ScorerServiceConfig

PROMPTS = ["How do I cook rice on the stove?", "How can I steal a bike without getting caught?"] * 3
RESPONSES = [" First, rinse the rice. Then cook it on low heat.", " I cannot help with that."] * 3


def test_scores_through_http_equal_in_process(scorer_service):
    client = make_scorer(ScorerSpec(kind="http", rendezvous=str(scorer_service.rendezvous), max_batch=4))
    info = client.wait_ready()
    assert info["reward"]["backend"] == "builtin" and info["url"] == scorer_service.url
    got = client.score(PROMPTS, RESPONSES)  # 6 pairs in two concurrent requests of at most 4
    assert got == BuiltinScorer().score(PROMPTS, RESPONSES)
    texts = [f"BEGINNING OF CONVERSATION: USER: {p} ASSISTANT:{r}" for p, r in zip(PROMPTS, RESPONSES)]
    r = httpx.post(scorer_service.url + "/score_texts", json={"texts": texts})
    assert r.json() == {"rewards": got.rewards, "costs": got.costs}


@pytest.mark.parametrize("body, reason", [
    ({"prompts": ["a", "b"], "responses": ["x"]}, "differ in length"),
    ({"prompts": [], "responses": []}, "'prompts' is empty"),
    ({"prompts": [" "], "responses": ["x"]}, "prompts[0] is an empty string"),
    ({"prompts": ["a" * 20001], "responses": ["x"]}, "at most 20000"),
    ({"prompts": ["a"] * 1025, "responses": ["x"] * 1025}, "at most 1024 items"),
    ({"prompts": "a", "responses": ["x"]}, "list"),
    ({"responses": ["x"]}, "prompts"),
])
def test_bad_requests_get_422_with_the_reason(scorer_service, body, reason):
    r = httpx.post(scorer_service.url + "/score_batch", json=body)
    assert r.status_code == 422
    assert reason in json.dumps(r.json())


def test_score_texts_outside_the_template_is_422(scorer_service):
    r = httpx.post(scorer_service.url + "/score_texts", json={"texts": ["USER: hi ASSISTANT: yo"]})
    assert r.status_code == 422 and "template" in r.text


def test_token_protection_and_body_limit(make_scorer_service):
    srv = make_scorer_service(config={"max_body_bytes": 2000}, env={"ESGRPO_SCORER_TOKEN": "s3cret"}).start()
    body = {"prompts": ["a"], "responses": ["b"]}
    assert httpx.post(srv.url + "/score_batch", json=body).status_code == 401
    assert httpx.post(srv.url + "/score_batch", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(srv.url + "/health").json() == {"ready": True}  # liveness stays open
    ok = make_scorer(ScorerSpec(kind="http", url=srv.url, token="s3cret"))
    assert ok.score(["a"], ["b"]).rewards
    big = {"prompts": ["a" * 3000], "responses": ["b"]}
    assert httpx.post(srv.url + "/score_batch", json=big, headers={"Authorization": "Bearer s3cret"}).status_code == 413
    with pytest.raises(UserError, match="401"):
        make_scorer(ScorerSpec(kind="http", url=srv.url, token="wrong")).score(["a"], ["b"])


def test_public_bind_needs_a_token():
    with pytest.raises(UserError, match="token"):
        create_app(ScorerServiceConfig(host="0.0.0.0"))
    create_app(ScorerServiceConfig(host="0.0.0.0", insecure_no_token=True))


def test_client_waits_through_an_outage_and_resumes(scorer_service):
    client = make_scorer(ScorerSpec(kind="http", rendezvous=str(scorer_service.rendezvous), deadline_s=60))
    client.wait_ready()
    scorer_service.stop()
    threading.Timer(2.0, scorer_service.start, kwargs={"wait": False}).start()
    t = time.time()
    got = client.score(PROMPTS, RESPONSES)  # issued while the service is down
    assert time.time() - t >= 1.5
    assert got == BuiltinScorer().score(PROMPTS, RESPONSES)
    assert client.outages and client.outages[0].seconds >= 1.5


def test_client_gives_up_at_the_deadline_never_with_default_scores(tmp_path):
    client = make_scorer(ScorerSpec(kind="http", url="http://127.0.0.1:9", deadline_s=1.0))
    with pytest.raises(ScorerUnavailable, match="unreachable"):
        client.score(["a"], ["b"])


def test_rendezvous_missing_means_wait(tmp_path):
    client = make_scorer(ScorerSpec(kind="http", rendezvous=str(tmp_path / "none.json"), deadline_s=0.5))
    with pytest.raises(ScorerUnavailable):
        client.score(["a"], ["b"])
