"""What an adversarial review found in the scorer service and client, each against a real server on loopback."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from harness.errors import BadScorerReply, ScorerError, UserError
from harness.run import make_scorer
from harness.scoring import ScorerSpec
from scorer.server import check_rendezvous, create_app
from scorer.service_config import ScorerServiceConfig


class LyingScorer:
    """A real HTTP server that answers /score_batch with whatever the test sets (status, body)."""

    def __init__(self):
        self.status, self.body, self.delay, self.headers, self.trickle = 200, b"{}", 0.0, {}, False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self):
                time.sleep(outer.delay)
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                for k, v in outer.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if not outer.trickle:
                    self.wfile.write(outer.body)
                    return
                for i in range(len(outer.body)):  # a byte every 0.2 s: never a read timeout, never done in time
                    self.wfile.write(outer.body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.2)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._reply()

            do_GET = _reply

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, status: int, body) -> None:
        self.status = status
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()


@pytest.fixture
def liar():
    srv = LyingScorer()
    yield srv
    srv.server.shutdown()


@pytest.mark.parametrize("body, reason", [
    ({"rewards": [1.0, 2.0, 3.0], "costs": [0.0, 0.0, 0.0]}, "'rewards' has 3 values for 4 pairs"),
    ({"rewards": [1.0] * 5, "costs": [0.0] * 5}, "'rewards' has 5 values for 4 pairs"),
    ({"rewards": [True, 1.0, 1.0, 1.0], "costs": [0.0] * 4}, "'rewards'[0] is True"),
    ({"rewards": ["1", 1.0, 1.0, 1.0], "costs": [0.0] * 4}, "not a finite number"),
    ({"rewards": [1.0] * 4}, "'costs' is missing"),
    ([1, 2], "expected a JSON object"),
    (b"<html>oops</html>", "reply is not JSON"),
    (b'{"rewards": [' + b"9" * 401 + b', 1, 1, 1], "costs": [0, 0, 0, 0]}', "'rewards'[0] is 999999"),
    ({"rewards": [1e308, 1e308, 1.0, 1.0], "costs": [0.0] * 4}, "'rewards'[0] is 1e+308, not a finite number within"),
])
def test_a_scorer_that_lies_is_an_error_never_a_shorter_list(liar, body, reason):
    liar.answer(200, body)
    client = make_scorer(ScorerSpec(kind="http", url=liar.url, deadline_s=5))
    with pytest.raises(BadScorerReply, match="scorer http://127.0.0.1") as e:
        client.score(["a", "b", "c", "d"], ["w", "x", "y", "z"])
    assert reason in str(e.value)


def test_permanent_failures_fail_at_once(liar):
    liar.answer(500, {"detail": "scorer failed to load: no such model", "permanent": True})
    client = make_scorer(ScorerSpec(kind="http", url=liar.url, deadline_s=30))
    t = time.time()
    with pytest.raises(ScorerError, match="failed to load"):
        client.score(["a"], ["b"])
    assert time.time() - t < 3
    with pytest.raises(UserError, match="ftp://"):
        make_scorer(ScorerSpec(kind="http", url="ftp://127.0.0.1:1", deadline_s=30)).score(["a"], ["b"])


def test_the_deadline_holds_with_a_request_in_flight(liar):
    liar.answer(200, {"rewards": [1.0], "costs": [0.0]})
    liar.delay = 5.0
    client = make_scorer(ScorerSpec(kind="http", url=liar.url, deadline_s=1.0, request_timeout_s=120))
    t = time.time()
    with pytest.raises(ScorerError):
        client.score(["a"], ["b"])
    assert time.time() - t < 3.0


def test_a_huge_invalid_body_gets_a_short_422_and_health_stays_up(make_scorer_service):
    srv = make_scorer_service(config={"max_body_bytes": 32 * 2**20}).start()
    body = json.dumps({"prompts": list(range(1_000_000)), "responses": ["x"]}).encode()
    t = time.time()
    r = httpx.post(srv.url + "/score_batch", content=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 422 and len(r.content) < 2000 and "at most 1024 items" in r.text
    assert "999999" not in r.text  # the input is never echoed
    assert time.time() - t < 10
    items = {"prompts": [1] * 20, "responses": ["x"] * 20}
    r = httpx.post(srv.url + "/score_batch", json=items)
    assert r.status_code == 422 and len(r.json()["detail"]) == 6 and r.json()["detail"][-1] == "... and 15 more"
    assert httpx.get(srv.url + "/health").status_code == 200


def test_a_chunked_body_is_counted_as_it_arrives(make_scorer_service):
    srv = make_scorer_service(config={"max_body_bytes": 10_000}).start()

    def chunks():
        yield b'{"prompts": ["'
        for _ in range(100):
            yield b"a" * 1000
        yield b'"], "responses": ["x"]}'

    r = httpx.post(srv.url + "/score_batch", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    ok = httpx.post(srv.url + "/score_batch", content=iter([b'{"prompts": ["a"], ', b'"responses": ["x"]}']),
                    headers={"Content-Type": "application/json"})
    assert ok.status_code == 200


def test_tokens_non_ascii_empty_or_blank(make_scorer_service, tmp_path):
    srv = make_scorer_service(env={"ESGRPO_SCORER_TOKEN": "s3cret-token"}).start()
    with socket.create_connection(("127.0.0.1", srv.port)) as s:  # raw bytes: httpx refuses to send them
        s.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s\xe9cret\r\nConnection: close\r\n\r\n")
        head = s.recv(200)
    assert head.startswith(b"HTTP/1.1 401")
    with pytest.raises(UserError, match="printable ASCII"):
        create_app(ScorerServiceConfig(host="0.0.0.0", token="sécret"))
    with pytest.raises(UserError, match="printable ASCII"):
        create_app(ScorerServiceConfig(host="0.0.0.0", token="   "))
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(UserError, match="token file is empty"):
        create_app(ScorerServiceConfig(host="0.0.0.0", token_file=str(empty)))
    with pytest.raises(UserError, match="token file not found"):
        create_app(ScorerServiceConfig(token_file=str(tmp_path / "missing")))


def test_requests_the_schema_does_not_allow(scorer_service):
    texts = ["BEGINNING OF CONVERSATION: USER:  ASSISTANT: hi"]
    r = httpx.post(scorer_service.url + "/score_texts", json={"texts": texts})
    assert r.status_code == 422 and "empty string" in r.text
    r = httpx.post(scorer_service.url + "/score_batch", json={"prompts": ["a"], "responses": ["b"], "extra": 1})
    assert r.status_code == 422 and "extra" in r.text


@pytest.mark.parametrize("override, reason", [
    ({"max_wait_ms": float("inf")}, "max_wait_ms"),
    ({"max_wait_ms": 1e9}, "max_wait_ms"),
    ({"port": 70000}, "port"),
])
def test_service_settings_that_would_hang_or_fail_later(override, reason):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=reason):
        ScorerServiceConfig(**override)


def test_serve_refuses_a_bad_port_and_rendezvous_paths(tmp_path):
    from scorer.server import serve

    with pytest.raises(UserError, match="port"):
        serve(None, port=70000)
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("my notes")
    with pytest.raises(UserError, match="not a scorer rendezvous file"):
        check_rendezvous(unrelated)
    assert unrelated.read_text() == "my notes"
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write the rendezvous file"):
        check_rendezvous(blocker / "sub" / "scorer.json")
    stale = tmp_path / "scorer.json"
    stale.write_text(json.dumps({"url": "http://x:1", "pid": 1}))
    check_rendezvous(stale)  # an old rendezvous is replaced


def test_a_service_whose_models_failed_to_load_says_so_once_and_for_good(make_scorer_service):
    srv = make_scorer_service(config={"reward": {"kind": "beaver", "path": "/nonexistent/model"}},
                              env={"ESGRPO_SCORER_TOKEN": "s3cret-token"}).start(wait=False)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(srv.url + "/health").status_code == 500:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    health = httpx.get(srv.url + "/health")
    assert health.json()["permanent"] is True and "nonexistent" not in health.text  # no path without the token
    told = httpx.get(srv.url + "/health", headers={"Authorization": "Bearer s3cret-token"}).json()
    assert "/nonexistent/model" in told["error"]
    stranger = httpx.post(srv.url + "/score_batch", json={"prompts": ["a"], "responses": ["b"]})
    assert stranger.status_code == 401 and "nonexistent" not in stranger.text  # no details without the token
    client = make_scorer(ScorerSpec(kind="http", url=srv.url, token="s3cret-token", deadline_s=60))
    t = time.time()
    with pytest.raises(ScorerError, match="failed to load.*/nonexistent/model"):
        client.score(["a"], ["b"])
    assert time.time() - t < 3  # not retried until the deadline


def test_a_hostile_reply_is_cut_at_the_deadline_and_the_size_cap(liar):
    import gzip

    liar.answer(200, {"rewards": [1.0], "costs": [0.0]})
    liar.trickle = True  # one byte every 0.2 s: 8 s for the whole reply, past a 1.5 s deadline
    client = make_scorer(ScorerSpec(kind="http", url=liar.url, deadline_s=1.5, request_timeout_s=120))
    t = time.time()
    with pytest.raises(ScorerError, match="still arriving at the deadline"):
        client.score(["a"], ["b"])
    assert time.time() - t < 2.5
    liar.trickle = False
    liar.answer(200, gzip.compress(b" " * (64 << 20)))  # 64 kB that inflate to 64 MiB
    liar.headers = {"Content-Encoding": "gzip"}
    with pytest.raises(BadScorerReply, match="larger than 16 MiB \\(decoded\\)"):
        make_scorer(ScorerSpec(kind="http", url=liar.url, deadline_s=5)).score(["a"], ["b"])
    liar.answer(200, gzip.compress(json.dumps({"rewards": [1.0], "costs": [-2.0]}).encode()))
    assert make_scorer(ScorerSpec(kind="http", url=liar.url, deadline_s=5)).score(["a"], ["b"]) == ([1.0], [-2.0])


def test_backoff_never_sleeps_past_the_deadline_and_a_redirect_is_named(liar):
    liar.answer(503, {"detail": "loading"})
    client = make_scorer(ScorerSpec(kind="http", url=liar.url, deadline_s=4.0))
    t = time.time()
    with pytest.raises(ScorerError, match="unreachable for 4s"):
        client.score(["a"], ["b"])
    assert time.time() - t < 4.5
    liar.answer(302, b"")
    liar.headers = {"Location": "http://elsewhere.example/score_batch"}
    with pytest.raises(UserError, match="answered 302, a redirect to 'http://elsewhere.example/score_batch'"):
        make_scorer(ScorerSpec(kind="http", url=liar.url, deadline_s=5)).score(["a"], ["b"])


def raw_exchange(url: str, data: bytes, wait_s: float, first_reply: bool = False) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection and read until the server closes it (or ``wait_s`` passes, or with
    ``first_reply`` until the first bytes come back): what came back and when."""
    host, port = url.removeprefix("http://").split(":")
    t = time.time()
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(data)
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
                if first_reply:
                    break
        except (socket.timeout, ConnectionResetError):
            pass
    return got, time.time() - t


def test_connections_that_stall_are_closed_and_strangers_are_refused_before_their_body(make_scorer_service):
    srv = make_scorer_service(config={"header_timeout_s": 1.0, "body_timeout_s": 1.5, "idle_timeout_s": 2.0,
                                      "token": "s3cret-token"}).start()
    got, took = raw_exchange(srv.url, b"", 10)  # connects and says nothing
    assert got == b"" and took < 3
    got, took = raw_exchange(srv.url, b"POST /score_batch HTTP/1.1\r\nHost: x\r\n", 10)  # headers never end
    assert got == b"" and took < 3
    body = json.dumps({"prompts": ["a"], "responses": ["b"]}).encode()
    head = (f"POST /score_batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-token\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    got, took = raw_exchange(srv.url, head + body[:-1], 10)  # the body stops one byte short
    assert got.startswith(b"HTTP/1.1 408") and b"not received within 1.5s" in got and took < 4
    # no token: refused at the headers, before a 15 MB body it never sends
    got, took = raw_exchange(srv.url, b"POST /score_batch HTTP/1.1\r\nHost: x\r\nContent-Length: 15000000\r\n\r\n", 10,
                             first_reply=True)
    assert got.startswith(b"HTTP/1.1 401") and took < 1.4  # at once, not at the body's 1.5 s
    # a Content-Length written with spaces around it is still the length (RFC 9110: optional whitespace)
    spaced = head.replace(f"Content-Length: {len(body)}".encode(), f"Content-Length:  {len(body)} ".encode())
    got, _ = raw_exchange(srv.url, spaced.replace(b"HTTP/1.1", b"HTTP/1.0") + body, 10)
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    for length in (b"12abc", b"-1", b"1e3", b"0x10"):  # a length that is not a number is the client's fault
        bad = head.replace(f"Content-Length: {len(body)}".encode(), b"Content-Length: " + length)
        got, _ = raw_exchange(srv.url, bad.replace(b"HTTP/1.1", b"HTTP/1.0") + body, 10)
        assert got.startswith(b"HTTP/1.1 400"), (length, got[:200])
    # a 422 never echoes the client's input back, not even a field name
    r = httpx.post(srv.url + "/score_batch", headers={"Authorization": "Bearer s3cret-token"},
                   json={"prompts": ["a"], "responses": ["b"], "k" * 1_000_000: 1})
    assert r.status_code == 422 and len(r.content) < 1000
