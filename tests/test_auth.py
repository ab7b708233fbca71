"""The token that guards the history, feedback and reports: the real app, a real
session cookie, the app closed by default whatever server runs it, and `pneumo
serve` refusing to start exposed without a token."""

from __future__ import annotations

import io

import pytest

from pneumo.cli import main
from pneumo.web import auth, create_app
from synthetic import encode, synthetic_xray

TOKEN = "correct-horse-battery-staple-42-and-more"


@pytest.fixture
def app(tiny_predictor, tmp_path):
    return create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                       "PNEUMO_DATA_DIR": str(tmp_path), "PNEUMO_KEEP_STUDIES": True,
                       "PNEUMO_API_TOKEN": TOKEN})


def bearer(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def predict(client, headers=None):
    png = encode(synthetic_xray(2, (300, 260)))
    response = client.post("/api/v1/predict?heatmap=false", headers=headers or {},
                           data={"file": (io.BytesIO(png), "a.png")})
    assert response.status_code == 200
    return response.get_json()


def test_keeping_studies_nobody_could_read_refuses_to_start(tiny_predictor, tmp_path):
    config = {"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor, "PNEUMO_DATA_DIR": str(tmp_path),
              "PNEUMO_KEEP_STUDIES": True}
    with pytest.raises(RuntimeError, match="PNEUMO_API_TOKEN"):
        create_app(config)
    with pytest.raises(RuntimeError, match="at least 32"):
        create_app({**config, "PNEUMO_API_TOKEN": "short"})


def test_serve_beyond_loopback_keeping_studies_without_a_token_exits(monkeypatch, tmp_path,
                                                                     tiny_bundle, capsys):
    monkeypatch.setenv("PNEUMO_KEEP_STUDIES", "1")
    monkeypatch.delenv("PNEUMO_API_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "0", "--model", str(tiny_bundle)]) == 2
    assert "PNEUMO_API_TOKEN" in capsys.readouterr().err


def test_the_api_needs_the_token(app):
    client = app.test_client()
    study_id = predict(client, bearer())["study_id"]
    assert study_id
    assert predict(client)["study_id"] is None  # screening stays open; the history does not
    for path in ("/api/v1/studies", f"/api/v1/studies/{study_id}",
                 f"/api/v1/studies/{study_id}/thumbnail.png",
                 f"/api/v1/studies/{study_id}/report.pdf"):
        for headers in ({}, bearer("wrong-token-of-some-length"), bearer(TOKEN + "x"),
                        {"Authorization": f"Basic {TOKEN}"}):
            response = client.get(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.get_json()["error"]["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert client.get(path, headers=bearer()).status_code == 200, path
    assert client.post(f"/api/v1/studies/{study_id}/feedback",
                       json={"verdict": "agree"}).status_code == 401
    assert client.post(f"/api/v1/studies/{study_id}/feedback", json={"verdict": "agree"},
                       headers=bearer()).status_code == 200
    assert client.get("/api/v1/studies", headers=bearer()).get_json()["total"] == 1


def test_the_pages_need_a_login(app):
    client = app.test_client()
    study_id = predict(client, bearer())["study_id"]
    for path in ("/history", f"/studies/{study_id}"):
        response = client.get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert client.post(f"/studies/{study_id}/feedback", data={"verdict": "NORMAL"}
                       ).status_code == 302
    wrong = client.post("/login", data={"token": "nope", "next": "/history"})
    assert wrong.status_code == 401 and "not right" in wrong.get_data(as_text=True)
    assert client.get("/history").status_code == 302
    # a login posted from another site is refused like any cross-site form
    assert client.post("/login", data={"token": TOKEN},
                       headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    ok = client.post("/login", data={"token": TOKEN, "next": f"/studies/{study_id}"})
    assert ok.status_code == 303 and ok.headers["Location"].endswith(f"/studies/{study_id}")
    cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    assert client.get("/history").status_code == 200
    assert client.post(f"/studies/{study_id}/feedback", data={"verdict": "NORMAL"}
                       ).status_code == 303
    assert "Log out" in client.get("/").get_data(as_text=True)
    client.post("/logout")
    assert client.get("/history").status_code == 302


class Clock:
    """A clock the test moves by hand, for the failed-attempt window."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_wrong_bearer_tokens_from_one_address_are_slowed_down(app):
    clock = Clock()
    app.extensions["pneumo.auth.failures"].clock = clock
    client = app.test_client()
    for _ in range(auth.MAX_FAILURES - 1):
        assert client.get("/api/v1/studies", headers=bearer("a-wrong-guess-xxxx")
                          ).status_code == 401
    refused = client.get("/api/v1/studies", headers=bearer("a-wrong-guess-yyyy"))
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "too_many_attempts"
    assert refused.headers["Retry-After"] == str(int(auth.FAILURE_WINDOW))
    # while it waits, even the right token is not compared; screening still works
    assert client.get("/api/v1/studies", headers=bearer()).status_code == 429
    assert predict(client, bearer())["study_id"] is None
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    assert other.get("/api/v1/studies", headers=bearer()).status_code == 200
    clock.now += auth.FAILURE_WINDOW / 2
    assert int(client.get("/api/v1/studies", headers=bearer()).headers["Retry-After"]) \
        == auth.FAILURE_WINDOW / 2
    clock.now += auth.FAILURE_WINDOW / 2 + 1
    assert client.get("/api/v1/studies", headers=bearer()).status_code == 200
    assert predict(client, bearer())["study_id"]


def test_wrong_logins_from_one_address_are_slowed_down(app):
    clock = Clock()
    app.extensions["pneumo.auth.failures"].clock = clock
    client = app.test_client()
    for _ in range(auth.MAX_FAILURES - 1):
        assert client.post("/login", data={"token": "nope"}).status_code == 401
    last = client.post("/login", data={"token": "nope"})
    assert last.status_code == 429 and last.headers["Retry-After"] == "600"
    assert "try again in 10 minutes" in last.get_data(as_text=True)
    right = client.post("/login", data={"token": TOKEN})
    assert right.status_code == 429 and "Set-Cookie" not in right.headers
    assert client.get("/history").status_code == 302
    clock.now += auth.FAILURE_WINDOW + 1
    assert client.post("/login", data={"token": TOKEN}).status_code == 303
    assert client.get("/history").status_code == 200


def test_failed_attempts_forget_old_failures_and_old_addresses():
    clock = Clock()
    attempts = auth.FailedAttempts(limit=2, window=60, clock=clock, max_addresses=3)
    for address in ("a", "b", "c", "d"):
        attempts.failed(address)
        attempts.failed(address)
    assert attempts.wait("a") == 0  # forgotten: only the 3 most recent addresses are kept
    assert attempts.wait("d") == 60
    clock.now += 30
    attempts.succeeded("c")
    assert attempts.wait("c") == 0 and attempts.wait("b") == 30
    clock.now += 31
    assert attempts.wait("b") == attempts.wait("d") == 0


def test_login_never_redirects_off_site(app):
    client = app.test_client()
    for target in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
        response = client.post("/login", data={"token": TOKEN, "next": target})
        assert response.status_code == 303
        assert response.headers["Location"].endswith("/history"), target


def test_without_a_token_for_the_local_user_nothing_asks_for_one(tiny_predictor, tmp_path):
    client = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                         "PNEUMO_DATA_DIR": str(tmp_path),
                         "PNEUMO_LOCAL_USER": True}).test_client()
    assert predict(client)["study_id"]
    assert client.get("/api/v1/studies").status_code == 200
    assert client.get("/login").status_code == 404


# -- closed by default: the rule lives in the app, not in the command line -------------------

HISTORY_PATHS = ("/api/v1/studies", "/history")


@pytest.mark.reliability(27)
def test_the_app_is_closed_by_default(tiny_predictor, tmp_path):
    """``create_app()`` as waitress-serve or flask run would call it: no token, no
    history for anyone, nothing kept."""
    app = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                      "PNEUMO_DATA_DIR": str(tmp_path)})
    client = app.test_client()
    assert predict(client)["study_id"] is None
    response = client.get("/api/v1/studies")
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "forbidden"
    assert "PNEUMO_API_TOKEN" in response.get_json()["error"]["message"]
    assert client.get("/history").status_code == 403
    assert client.post("/api/v1/studies/x/feedback", json={"verdict": "agree"}).status_code == 403
    assert not list(tmp_path.iterdir())  # no database was even made


@pytest.mark.reliability(27)
@pytest.mark.parametrize("headers, address", [
    ({"X-Forwarded-For": "203.0.113.7"}, "127.0.0.1"),
    ({"Forwarded": "for=203.0.113.7;proto=https"}, "127.0.0.1"),
    ({"X-Real-IP": "203.0.113.7"}, "127.0.0.1"),
    ({}, "192.0.2.10"),
], ids=["x-forwarded-for", "forwarded", "x-real-ip", "remote-address"])
def test_for_the_local_user_a_proxied_or_remote_request_counts_as_remote(
        tiny_predictor, tmp_path, headers, address):
    client = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                         "PNEUMO_DATA_DIR": str(tmp_path),
                         "PNEUMO_LOCAL_USER": True}).test_client()
    environ = {"REMOTE_ADDR": address}
    for path in HISTORY_PATHS:
        assert client.get(path, headers=headers, environ_base=environ).status_code == 403
        assert client.get(path).status_code == 200  # the local user, straight from loopback
    png = encode(synthetic_xray(2, (300, 260)))
    answer = client.post("/api/v1/predict?heatmap=false", headers=headers, environ_base=environ,
                         data={"file": (io.BytesIO(png), "a.png")}).get_json()
    assert answer["study_id"] is None  # screened, but not written into the local history


@pytest.mark.slow
@pytest.mark.reliability(27)
def test_waitress_serve_call_create_app_publishes_no_history(tiny_bundle, tmp_path):
    """The deployment the README's proxy advice and ``waitress-serve --call`` give: the
    real waitress, the app built with no arguments, asked from loopback."""
    import json
    import os
    import sys
    import urllib.error
    import urllib.request

    from real_server import free_port, start, wait_ready

    port = free_port()
    env = {"PNEUMO_MODEL": str(tiny_bundle), "PNEUMO_DATA_DIR": str(tmp_path / "data")}
    os.environ.update(env)
    try:
        process = start([sys.executable, "-m", "waitress", "--listen", f"127.0.0.1:{port}",
                         "--call", "pneumo.web:create_app"], tmp_path / "waitress.log")
    finally:
        for name in env:
            os.environ.pop(name)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, tmp_path / "waitress.log")
        for path in HISTORY_PATHS:
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url + path, timeout=10)
            assert refused.value.code == 403
            refused.value.close()
        refused.value.close()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(
                url + "/api/v1/studies/x/feedback", method="POST",
                data=json.dumps({"verdict": "agree"}).encode(),
                headers={"Content-Type": "application/json"}), timeout=10)
        assert refused.value.code == 403
        refused.value.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert not (tmp_path / "data").exists() or not list((tmp_path / "data").iterdir())


# -- DNS rebinding: the Host allow-list ------------------------------------------------------

@pytest.mark.reliability(28)
def test_a_local_users_app_answers_only_to_its_own_host_names(tiny_predictor, tmp_path):
    client = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                         "PNEUMO_DATA_DIR": str(tmp_path),
                         "PNEUMO_LOCAL_USER": True}).test_client()
    for host in ("localhost:5000", "127.0.0.1:5000", "localhost"):
        assert client.get("/api/v1/studies", headers={"Host": host}).status_code == 200
    rebound = {"Host": "attacker.example:5000"}
    response = client.get("/api/v1/studies", headers=rebound)
    assert response.status_code == 400
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/history", headers=rebound).status_code == 400
    assert client.post("/api/v1/studies/x/feedback", json={"verdict": "agree"},
                       headers=rebound).status_code == 400


def test_the_host_allow_list_is_configurable(tiny_predictor, tmp_path, monkeypatch):
    from pneumo.web.server import trusted_hosts

    client = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                         "PNEUMO_DATA_DIR": str(tmp_path), "PNEUMO_API_TOKEN": TOKEN,
                         "TRUSTED_HOSTS": [".hospital.example"]}).test_client()
    assert client.get("/api/v1/health", headers={"Host": "pneumo.hospital.example"}
                      ).status_code == 200
    assert client.get("/api/v1/health", headers={"Host": "localhost"}).status_code == 400
    monkeypatch.delenv("PNEUMO_TRUSTED_HOSTS", raising=False)
    assert trusted_hosts("127.0.0.1") == ["localhost", "127.0.0.1"]
    assert trusted_hosts("10.1.2.3") == ["10.1.2.3"]
    assert trusted_hosts("0.0.0.0") is None
    monkeypatch.setenv("PNEUMO_TRUSTED_HOSTS", "pneumo.example, .hospital.example")
    assert trusted_hosts("0.0.0.0") == ["pneumo.example", ".hospital.example"]


# -- strong tokens, and sessions the server can end ------------------------------------------

@pytest.mark.parametrize("weak, why", [
    ("x" * 31, "at least 32"),
    ("correct horse battery staple 42 and more", "no spaces"),
    ("ab" * 20, "too few characters"),
    ("p\u00e4ssw\u00f6rd-" * 4, "only letters"),
])
def test_weak_tokens_are_refused_with_the_reason(tiny_predictor, tmp_path, weak, why):
    with pytest.raises(RuntimeError, match=f"too weak: .*{why}.*pneumo token"):
        create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                    "PNEUMO_DATA_DIR": str(tmp_path), "PNEUMO_API_TOKEN": weak})


def test_pneumo_token_prints_a_strong_token(capsys):
    assert main(["token"]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["token"]) == 0
    second = capsys.readouterr().out.strip()
    assert first != second and len(first) >= 43
    assert auth.check_token(first) is None and auth.check_token(second) is None


def test_logout_ends_the_session_for_a_copied_cookie_too(app):
    client = app.test_client()
    study_id = predict(client, bearer())["study_id"]
    assert client.post("/login", data={"token": TOKEN}).status_code == 303
    cookie = client.get_cookie("pneumo_session")
    assert client.get(f"/studies/{study_id}").status_code == 200
    thief = app.test_client()
    thief.set_cookie("pneumo_session", cookie.value)
    assert thief.get(f"/studies/{study_id}").status_code == 200  # the copy works while logged in
    client.post("/logout")
    assert client.get(f"/studies/{study_id}").status_code == 302
    assert thief.get(f"/studies/{study_id}").status_code == 302  # and not after logout


# -- behind a TLS reverse proxy ---------------------------------------------------------------

@pytest.fixture
def proxied(tiny_predictor, tmp_path):
    return create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                       "PNEUMO_DATA_DIR": str(tmp_path), "PNEUMO_API_TOKEN": TOKEN,
                       "PNEUMO_BEHIND_PROXY": True})


PROXY = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pneumo.example.org"}


def test_behind_a_proxy_the_session_cookie_is_secure(proxied):
    client = proxied.test_client()
    response = client.post("/login", data={"token": TOKEN},
                           headers={**PROXY, "X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 303
    cookie = response.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert response.headers["Location"].startswith("/")
    direct = create_app({"TESTING": True, "PNEUMO_PREDICTOR": proxied.extensions[
        "pneumo.predictor"], "PNEUMO_API_TOKEN": TOKEN, "PNEUMO_KEEP_STUDIES": False})
    plain = direct.test_client().post("/login", data={"token": TOKEN})
    assert "Secure" not in plain.headers["Set-Cookie"]


def test_behind_a_proxy_guesses_are_counted_per_client_and_one_hop_only(proxied):
    """The client address is the proxy's last X-Forwarded-For entry: one client's wrong
    tokens do not lock out another, and an address a client wrote itself is ignored."""
    client = proxied.test_client()
    guesser = {**PROXY, "X-Forwarded-For": "198.51.100.1, 203.0.113.66"}
    for _ in range(auth.MAX_FAILURES):
        assert client.get("/api/v1/studies", headers={**guesser, **bearer("x" * 40)}
                          ).status_code in (401, 429)
    assert client.get("/api/v1/studies", headers={**guesser, **bearer()}).status_code == 429
    spoofing = {**PROXY, "X-Forwarded-For": "203.0.113.66, 198.51.100.1"}
    assert client.get("/api/v1/studies", headers={**spoofing, **bearer()}).status_code == 200
