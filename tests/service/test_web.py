"""The dashboard's files as the API serves them, and GET /api/v1/whoami (the browser test of
the page itself is tests/integration/test_dashboard.py)."""
from __future__ import annotations

from fastapi.testclient import TestClient


def test_the_page_and_its_files_are_served_without_a_token(api_app):
    anonymous = TestClient(api_app)
    page = anonymous.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for src in ("/ui/app.js", "/ui/charts.js", "/ui/sweeps.js", "/ui/vendor/uplot/uPlot.iife.min.js"):
        assert f'src="{src}"' in page.text
        assert anonymous.get(src).status_code == 200, src
    assert "uplot 1.6.32" in anonymous.get("/ui/vendor/uplot/VERSION").text
    assert "MIT License" in anonymous.get("/ui/vendor/uplot/LICENSE").text


def test_the_dashboard_is_served_with_a_content_security_policy(api_app):
    anonymous = TestClient(api_app)
    for path in ("/", "/ui/app.js"):
        r = anonymous.get(path)
        csp = dict(part.strip().split(" ", 1) for part in r.headers["content-security-policy"].split(";"))
        assert csp["script-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
        assert csp["connect-src"] == "'self'" and csp["object-src"] == "'none'"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
    # the API's answers, errors and the body-size refusal included, are not sniffed or framed
    for r in (anonymous.get("/healthz"), anonymous.get("/api/v1/experiments"),
              anonymous.post("/api/v1/experiments", content=b"x" * (64 * 2**20))):
        assert r.headers["x-content-type-options"] == "nosniff", r.status_code
        assert r.headers["x-frame-options"] == "DENY"
        assert "content-security-policy" not in r.headers  # the dashboard's policy only
    # the page loads no script of its own inline: the policy would block it
    assert "<script>" not in anonymous.get("/").text


def test_no_file_outside_the_dashboard_folder_is_served(api_app):
    anonymous = TestClient(api_app)
    for path in ("/ui/%2e%2e/app.py", "/ui/..%2fapp.py", "/ui/%2e%2e/%2e%2e/settings.py",
                 "/ui/missing.js", "/ui/vendor"):
        r = anonymous.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert "def " not in r.text


def test_whoami_names_the_tokens_owner_and_scope(client, make_token):
    token = make_token("carol", "read")
    r = client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert r.json() == {"owner": "carol", "scope": "read"}
    bad = client.get("/api/v1/whoami", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and "invalid or revoked" in bad.json()["detail"]
