from __future__ import annotations


def test_dashboard_is_served_without_a_key(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/dashboard/app.js" in page.text
    js = client.get("/dashboard/app.js")
    assert js.status_code == 200 and "Authorization" in js.text
    assert client.get("/dashboard/style.css").status_code == 200
    missing = client.get("/dashboard/../../etc/passwd")
    assert missing.status_code == 404
    assert client.get("/dashboard/secrets.txt").json()["error"]["code"] == "not_found"
