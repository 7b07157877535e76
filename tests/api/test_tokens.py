"""/api/v1/tokens: self-service and admin token lifecycle; revoked and expired tokens get 401 at once;
the secret is shown once and never listed; the experiments' name filter matches `%` and `_` literally."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from store.models import ApiToken

from .conftest import Api, small_spec

TOKENS = "/api/v1/tokens"
ME = "/api/v1/experiments"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_create_list_revoke_rotate_own_tokens(api: Api) -> None:
    future = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    response = api.post(TOKENS, json={"expires_at": future})
    assert response.status_code == 201, response.text
    made = response.json()
    secret = made["token"]
    assert made["user"] == "alice" and made["state"] == "active" and secret.startswith(made["prefix"])
    assert datetime.fromisoformat(made["expires_at"]) == datetime.fromisoformat(future)
    assert api.client.get(ME, headers=bearer(secret)).status_code == 200

    listed = api.get(TOKENS)
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert [t["user"] for t in items] == ["alice", "alice"]  # her own only
    assert secret not in listed.text and api.tokens["alice"] not in listed.text and "token_hash" not in listed.text

    revoked = api.post(f"{TOKENS}/{made['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert api.client.get(ME, headers=bearer(secret)).status_code == 401  # at once
    assert api.post(f"{TOKENS}/{made['id']}/revoke").status_code == 200  # again: no change
    assert api.post(f"{TOKENS}/{made['id']}/rotate").status_code == 409

    # Rotating the token this request authenticates with: the answer carries its successor.
    own_id = items[0]["id"]
    rotated = api.post(f"{TOKENS}/{own_id}/rotate")
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()["token"]
    assert rotated.json()["expires_at"] is None
    assert api.get(ME).status_code == 401
    assert api.client.get(ME, headers=bearer(new)).status_code == 200


def test_another_users_tokens_are_out_of_reach(api: Api) -> None:
    bobs = api.get(TOKENS, "bob").json()["items"][0]["id"]
    assert api.post(f"{TOKENS}/{bobs}/revoke").status_code == 404
    assert api.post(f"{TOKENS}/{bobs}/rotate").status_code == 404
    assert api.get(TOKENS, params={"user": "bob"}).status_code == 403
    assert api.post(TOKENS, json={"user": "bob"}).status_code == 403
    assert api.get(ME, "bob").status_code == 200  # untouched


def test_an_admin_manages_anyones_tokens(api: Api) -> None:
    everyone = api.get(TOKENS, "admin").json()["items"]
    assert {t["user"] for t in everyone} == {"alice", "bob", "admin"}
    assert [t["user"] for t in api.get(TOKENS, "admin", params={"user": "bob"}).json()["items"]] == ["bob"]
    made = api.post(TOKENS, "admin", json={"user": "bob"})
    assert made.status_code == 201 and made.json()["user"] == "bob"
    assert api.client.get(ME, headers=bearer(made.json()["token"])).status_code == 200
    bobs = everyone[[t["user"] for t in everyone].index("bob")]["id"]
    assert api.post(f"{TOKENS}/{bobs}/revoke", "admin").status_code == 200
    assert api.get(ME, "bob").status_code == 401
    assert api.post(TOKENS, "admin", json={"user": "nobody"}).status_code == 404
    assert api.get(TOKENS, "admin", params={"user": "nobody"}).status_code == 404


def test_an_expired_token_gets_401_at_once(api: Api) -> None:
    with api.sessions.begin() as session:
        for row in session.scalars(select(ApiToken)):
            row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    response = api.get(ME)
    assert response.status_code == 401 and "expired" in response.json()["detail"]


def test_a_past_or_bad_expiry_is_a_422_and_creates_nothing(api: Api) -> None:
    before = api.counts()["api_tokens"]
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    for body in ({"expires_at": past}, {"expires_at": "soon"}, {"user": ""}, {"user": "a b"}):
        assert api.post(TOKENS, json=body).status_code == 422, body
    own = api.get(TOKENS).json()["items"][0]["id"]
    assert api.post(f"{TOKENS}/{own}/rotate", json={"expires_at": past}).status_code == 422
    assert api.counts()["api_tokens"] == before
    assert api.get(ME).status_code == 200  # a refused rotation revokes nothing
    for bad in ("0", "-1", str(2**63)):
        assert api.post(f"{TOKENS}/{bad}/revoke").status_code == 422
    assert api.post(f"{TOKENS}/{2**63 - 1}/revoke").status_code == 404


def test_tokens_need_a_token(api: Api) -> None:
    assert api.client.get(TOKENS).status_code == 401
    assert api.client.post(TOKENS, json={}).status_code == 401


def test_the_security_scheme_names_real_commands(api: Api) -> None:
    schemes = api.client.get("/api/v1/openapi.json").json()["components"]["securitySchemes"]
    (scheme,) = schemes.values()
    assert "`eos token create NAME`" in scheme["description"] and "`eos users create NAME`" in scheme["description"]
    assert "eos token` prints" not in scheme["description"]


def test_the_name_filter_matches_percent_and_underscore_literally(api: Api) -> None:
    for name in ("lr_sweep", "lrXsweep", "100% done", "100 done", "back\\slash"):
        api.submit(small_spec(), name=name)

    def names(query: str) -> list[str]:
        response = api.get(ME, params={"name": query})
        assert response.status_code == 200, response.text
        return sorted(e["name"] for e in response.json()["items"])

    assert names("lr_sweep") == ["lr_sweep"]
    assert names("_") == ["lr_sweep"]
    assert names("%") == ["100% done"]
    assert names("0% d") == ["100% done"]
    assert names("\\") == ["back\\slash"]
    assert names("sweep") == ["lrXsweep", "lr_sweep"]
