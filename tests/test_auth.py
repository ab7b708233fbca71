"""The token that guards the history, feedback and reports: the real app, a real
session cookie, and `pneumo serve` refusing to start exposed without a token."""

from __future__ import annotations

import io

import pytest

from pneumo.cli import main
from pneumo.web import auth, create_app
from synthetic import encode, synthetic_xray

TOKEN = "correct-horse-battery-staple-42"


@pytest.fixture
def app(tiny_predictor, tmp_path):
    return create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                       "PNEUMO_DATA_DIR": str(tmp_path), "PNEUMO_EXPOSED": True,
                       "PNEUMO_KEEP_STUDIES": True, "PNEUMO_API_TOKEN": TOKEN})


def bearer(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def predict(client, headers=None):
    png = encode(synthetic_xray(2, (300, 260)))
    response = client.post("/api/v1/predict?heatmap=false", headers=headers or {},
                           data={"file": (io.BytesIO(png), "a.png")})
    assert response.status_code == 200
    return response.get_json()


def test_exposed_with_studies_and_no_token_refuses_to_start(tiny_predictor, tmp_path):
    config = {"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor, "PNEUMO_DATA_DIR": str(tmp_path),
              "PNEUMO_EXPOSED": True, "PNEUMO_KEEP_STUDIES": True}
    with pytest.raises(RuntimeError, match="PNEUMO_API_TOKEN"):
        create_app(config)
    with pytest.raises(RuntimeError, match="at least 16"):
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


def test_without_a_token_on_loopback_nothing_asks_for_one(tiny_predictor, tmp_path):
    client = create_app({"TESTING": True, "PNEUMO_PREDICTOR": tiny_predictor,
                         "PNEUMO_DATA_DIR": str(tmp_path)}).test_client()
    assert predict(client)["study_id"]
    assert client.get("/api/v1/studies").status_code == 200
    assert client.get("/login").status_code == 404
