"""The dashboard in a real browser: Debian's headless Chromium driven by
Playwright (pinned in scripts/test.sh). Run by the Rust test
`dashboard::the_dashboard_works_in_headless_chromium`, which seeds the server
and passes one JSON argument: base, admin_key, out, expected_segment_size,
history_experiment, srm_experiment, pune_buyer.

Every step asserts what a person would check by eye; screenshots of the main
pages land in `out` (target/e2e-screenshots/).
"""

import json
import re
import sys
import urllib.request

from playwright.sync_api import expect, sync_playwright

ARGS = json.loads(sys.argv[1])
BASE = ARGS["base"]
OUT = ARGS["out"]
TIMEOUT_MS = 20_000


def api(method, path, body=None, key=ARGS["admin_key"]):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req) as resp:
        text = resp.read()
        return json.loads(text) if text else None


def shot(page, name):
    page.wait_for_load_state("networkidle")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=f"{OUT}/{name}.png", full_page=True)
    print(f"screenshot {name}.png")


def step(title):
    print(f"-- {title}", flush=True)


def sign_in(page, key, expect_path):
    step("sign in")
    page.goto(BASE + expect_path)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.fill("#api_key", key)
    page.click("button[type=submit]")
    expect(page).to_have_url(BASE + expect_path)


def main():
    errors = []
    playwright = sync_playwright().start()
    try:
        run(playwright, errors)
    except Exception:
        if CURRENT:
            CURRENT[0].screenshot(path=f"{OUT}/failure.png", full_page=True)
            print("page at failure:", CURRENT[0].url)
            print(CURRENT[0].inner_text("body")[:3000])
        print("errors seen:", errors)
        raise
    finally:
        playwright.stop()


CURRENT = []


def run(p, errors):
    if True:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        ctx.set_default_timeout(TIMEOUT_MS)
        outside = []
        # Nothing may be fetched from anywhere but the server itself.
        ctx.route(
            re.compile(r"^(?!" + re.escape(BASE) + ").*"),
            lambda route: (outside.append(route.request.url), route.abort()),
        )
        page = ctx.new_page()
        CURRENT.append(page)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        # JavaScript errors fail the test; the browser's own log lines for
        # expected 4xx answers ("Failed to load resource") do not.
        page.on(
            "console",
            lambda m: errors.append(f"console: {m.text}")
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None,
        )

        # A wrong key is refused with a message.
        page.goto(BASE + "/login")
        page.fill("#api_key", "sk_wrong")
        page.click("button[type=submit]")
        expect(page.locator(".form-error")).to_contain_text("not valid")

        sign_in(page, ARGS["admin_key"], "/segments")
        cookies = ctx.cookies()
        session = [c for c in cookies if c["name"] == "stratify_session"]
        assert session and session[0]["httpOnly"] and session[0]["secure"], cookies
        assert session[0]["sameSite"] == "Strict", session
        assert page.evaluate("document.cookie") == "", "the session cookie is not readable by scripts"

        step("overview")
        page.goto(BASE + "/")
        expect(page.locator(".stat").first).to_contain_text("Segments")
        expect(page.get_by_text("One-page checkout")).to_be_visible()
        shot(page, "overview")

        step("segments list with sparklines")
        page.goto(BASE + "/segments")
        row = page.locator("tr", has_text="Pune shoppers")
        expect(row).to_be_visible()
        expect(row.locator("svg.spark polyline")).to_have_count(1)
        shot(page, "segments")

        step("create a segment with the visual editor")
        page.click("text=+ New segment")
        expect(page).to_have_url(BASE + "/segments/new")
        page.fill("#seg-name", "Adult buyers")
        page.fill("#seg-desc", "Aged 30 or more, bought in the last 30 days")
        page.click("button[data-add=attribute]")
        cond = page.locator(".cond[data-kind=attribute]").first
        cond.locator("input.f-field").fill("age")
        cond.locator("select.f-op").select_option("gte")
        cond.locator("input.f-value").fill("30")
        page.click("button[data-add=behavior]")
        beh = page.locator(".cond[data-kind=behavior]").first
        beh.locator("input.f-event").fill("purchase")
        beh.locator("select.f-op").select_option("gte")
        beh.locator("input.f-num").first.fill("1")
        # The JSON side shows the same rule.
        rule = json.loads(page.input_value("#rule-json"))
        assert rule == {
            "operator": "AND",
            "conditions": [
                {"field": "age", "op": "gte", "value": 30},
                {"event": "purchase", "agg": "count", "within": "30d", "op": "gte", "value": 1},
            ],
        }, rule
        expected = ARGS["expected_segment_size"]
        expect(page.locator("#preview-count")).to_have_text(f"{expected:,}")
        expect(page.locator("#preview-sql")).to_contain_text("SELECT")
        # Editing the JSON redraws the builder (and the preview follows).
        page.fill("#rule-json", json.dumps({**rule, "operator": "OR"}))
        expect(page.locator("select.f-group-op")).to_have_value("OR")
        page.fill("#rule-json", json.dumps(rule))
        expect(page.locator("select.f-group-op")).to_have_value("AND")
        expect(page.locator("#preview-count")).to_have_text(f"{expected:,}")
        shot(page, "segment-editor")
        page.click("#save-segment")
        expect(page).to_have_url(re.compile(r"/segments/seg_[0-9a-f]+$"))
        for _ in range(50):
            if page.locator(".stat .value").first.inner_text() == f"{expected:,}":
                break
            page.wait_for_timeout(200)
            page.reload()
        expect(page.locator(".stat .value").first).to_have_text(f"{expected:,}")

        step("segment page: size history, changes, members")
        page.goto(BASE + "/segments")
        page.click("text=Pune shoppers")
        expect(page.locator("h1")).to_have_text("Pune shoppers")
        chart = page.locator("svg.chart").first
        expect(chart.locator("path[data-series=Members]")).to_have_count(1)
        expect(chart.locator("text.axis-label", has_text="Members")).to_have_count(1)
        expect(page.locator("text=entered").first).to_be_visible()
        expect(page.locator("pre.sql").last).to_contain_text("SELECT")
        shot(page, "segment")

        step("user page: attributes, explain, experiments, events")
        page.goto(BASE + "/users")
        page.fill("#user-id", ARGS["pune_buyer"])
        page.press("#user-id", "Enter")
        expect(page.locator("h1")).to_have_text(ARGS["pune_buyer"])
        expect(page.locator("dl.kv").first).to_contain_text("Pune")
        seg = page.locator("details.seg[data-segment]", has_text="Pune shoppers").first
        seg.locator("summary").click()
        expect(seg.locator(".tree li").first).to_be_visible()
        expect(seg.locator(".mark.yes").first).to_be_visible()
        expect(page.locator("text=One-page checkout")).to_be_visible()
        expect(page.locator("code", has_text="purchase").first).to_be_visible()
        shot(page, "user")

        step("create and start an experiment")
        page.goto(BASE + "/experiments")
        expect(page.locator(".tabs button.active")).to_contain_text("Running")
        expect(page.locator("tr[data-experiment]")).to_have_count(2)
        shot(page, "experiments")
        page.click("text=+ New experiment")
        page.fill("#exp-key", "e2e-hero-banner")
        page.fill("#exp-name", "Hero banner")
        page.fill("#exp-desc", "A bigger hero banner sells more")
        # A bad weight is caught by the server and pointed at.
        page.locator("input.v-weight").first.fill("70")
        page.click("#save-experiment")
        expect(page.locator(".alert")).to_contain_text("100")
        page.locator("input.v-weight").first.fill("50")
        page.click("text=+ Add variant")
        page.locator("input.v-key").nth(2).fill("huge")
        page.click("text=Split evenly")
        page.locator("input[aria-label='variant 2 payload']").fill('{"size": "big"}')
        page.fill("#exp-coverage", "100")
        page.click("#save-experiment")
        expect(page).to_have_url(re.compile(r"/experiments/exp_[0-9a-f]+$"))
        exp_url = page.url
        exp_id = exp_url.rsplit("/", 1)[1]
        expect(page.locator(".badge.draft").first).to_have_text("draft")
        page.click("button[data-action=start]")
        expect(page.locator(".page-head .badge.running")).to_have_text("running")
        expect(page.locator("button[data-action=pause]")).to_be_visible()
        shot(page, "experiment")
        got = api("GET", f"/v1/experiments/{exp_id}")
        assert [v["key"] for v in got["variants"]] == ["control", "treatment", "huge"], got
        assert got["variants"][1]["payload"] == {"size": "big"}, got

        step("traffic for the new experiment, then its results")
        for i in range(90):
            api("GET", f"/v1/users/u-{i:03d}/experiments")
        api("POST", "/v1/events", {"events": [
            {"user_id": f"u-{i:03d}", "name": "purchase", "properties": {"amount": 20}}
            for i in range(0, 90, 3)
        ]})
        page.goto(f"{exp_url}/results?event=purchase")
        expect(page.locator("#variant-table tbody tr")).to_have_count(3)
        expect(page.locator("#estimate-chart svg path[data-series]")).to_have_count(3)

        step("results with two weeks of history: chart with bands, lift, planner")
        page.goto(f"{BASE}/experiments/{ARGS['history_experiment']}/results?event=purchase")
        est = page.locator("#estimate-chart svg")
        expect(est.locator("path[data-series]")).to_have_count(2)
        expect(est.locator("polygon[data-band]")).to_have_count(2)
        expect(est.locator("text.axis-label", has_text="Conversion rate")).to_have_count(1)
        expect(est.locator("text.axis-label", has_text="Day (UTC")).to_have_count(1)
        # 15 daily points (days 0–14; now is the start of day 14) per variant.
        expect(est.locator("circle")).to_have_count(30)
        expect(page.locator("#lift-chart svg").first.locator("text.axis-label", has_text="Relative lift")).to_have_count(1)
        expect(page.locator("#srm-warning")).to_have_count(0)
        expect(page.locator("#variant-table")).to_contain_text("one_page")
        expect(page.locator(".stat", has_text="Exposed users").locator(".value")).to_have_text("280")
        page.fill("#plan-baseline", "0.1")
        page.fill("#plan-mde", "10")
        page.click("#plan-run")
        expect(page.locator("#plan-result")).to_contain_text("14,751 users per variant")
        shot(page, "results")

        step("results under the Bayesian engine: chance to win and risk")
        page.select_option("#engine", "bayesian")
        expect(page.locator("#variant-table thead")).to_contain_text("Risk")
        expect(page.locator("#variant-table tbody")).to_contain_text("keep control / ship")
        expect(page).to_have_url(re.compile(r"engine=bayesian"))
        page.select_option("#engine", "frequentist")
        page.check("#sequential")
        expect(page.locator("#variant-table thead")).to_contain_text("p (always valid)")
        shot(page, "results-sequential")

        step("sample-ratio mismatch is flagged")
        page.goto(f"{BASE}/experiments/{ARGS['srm_experiment']}/results?event=purchase")
        expect(page.locator("#srm-warning")).to_be_visible()
        expect(page.locator("#srm-warning")).to_contain_text("Sample ratio mismatch")
        expect(page.locator(".stat", has_text="Winner").locator(".value")).to_have_text("none yet")
        shot(page, "results-srm")

        step("ingestion")
        page.goto(BASE + "/ingest")
        http_row = page.locator("#sources tr", has_text="http")
        expect(http_row).to_be_visible()
        accepted = api("GET", "/v1/ingest/status")["sources"][0]["accepted"]
        expect(http_row).to_contain_text(f"{accepted:,}")
        shot(page, "ingestion")

        step("API keys: create a viewer key")
        page.goto(BASE + "/keys")
        page.fill("#key-name", "analyst laptop")
        page.select_option("#key-role", "viewer")
        page.click("text=Create key")
        expect(page.locator("#new-key")).to_contain_text("sfy_")
        viewer_key = page.locator("#new-key").inner_text().strip()
        shot(page, "keys")

        step("audit log: the key just made is the newest change, its secret withheld")
        page.click("nav a:has-text('Audit log')")
        newest = page.locator("#audit tbody tr").first
        expect(newest).to_contain_text("POST /v1/api-keys")
        expect(page.locator("#audit")).not_to_contain_text(viewer_key)
        page.fill("#audit-target", "experiments")
        page.click("#audit-filter")
        expect(page.locator("#audit tbody tr").first).to_contain_text("/v1/experiments")
        shot(page, "audit")

        step("sign out")
        page.click("text=Sign out")
        expect(page).to_have_url(re.compile(r"/login$"))
        page.goto(BASE + "/segments")
        expect(page).to_have_url(re.compile(r"/login\?next="))

        step("a viewer sees, but cannot change")
        viewer = browser.new_context(viewport={"width": 1400, "height": 1000})
        viewer.set_default_timeout(TIMEOUT_MS)
        vp = viewer.new_page()
        sign_in(vp, viewer_key, "/segments")
        expect(vp.locator("text=Pune shoppers")).to_be_visible()
        expect(vp.locator("text=+ New segment")).to_have_count(0)
        expect(vp.locator("nav a", has_text="API keys")).to_have_count(0)
        expect(vp.locator("nav a", has_text="Audit log")).to_have_count(0)
        vp.goto(BASE + "/segments/new")
        expect(vp.locator("h1")).to_have_text("Not allowed")
        vp.goto(f"{exp_url}")
        expect(vp.locator("button[data-action=pause]")).to_have_count(0)
        status = vp.evaluate(
            """async () => (await fetch('/v1/experiments/%s/pause', {method: 'POST',
                headers: {'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content}})).status"""
            % exp_id
        )
        assert status == 403, status
        viewer.close()
        browser.close()

    assert not outside, f"requests left the server: {outside}"
    assert not errors, "browser errors:\n" + "\n".join(errors)
    print("ALL DASHBOARD CHECKS PASSED")


if __name__ == "__main__":
    main()
