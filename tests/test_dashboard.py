"""Dashboards, for real: two real runs, their HTML report in headless Chromium, `harness diff`.

Two runs of QEMU and the crosvm double (tests/crosvm_double/crosvm) on one device set
that both engines are given: a serial console, the RTC, pvpanic, a disk and a virtio-net
device. crosvm has no user-mode networking, so without a TAP it presents no network
device, and QEMU does: a real engine disagreement, which the differential must name.
The first run also has a flaky test (fails once, passes on the retry), skips for
several reasons, and a program whose output is hostile (escape sequences, `<script>`,
invalid UTF-8, a fake JUnit attachment line). The second run gives every plot its
second point. About fourteen guest boots in all, shared by every test below.

The browser is Debian's chromium driven by selenium through Debian's chromium-driver,
headless, with a fresh profile and nothing that reaches a network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import html5lib
import pytest
import xmlschema
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from harness.report import junit_string, load_summary

ROOT = Path(__file__).resolve().parent.parent
DOUBLE = ROOT / "tests" / "crosvm_double" / "crosvm"
SUITES = ROOT / "tests" / "suites_for_tests"
SCHEMAS = [ROOT / "tests" / "schemas" / "junit-10.xsd",
           ROOT.parent / "shared" / "schemas" / "junit-10.xsd"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
NASTY = "nasty<script>alert(1)</script>"
# What the hostile program prints: a screen clear, a window title, a script tag, bytes
# that are not UTF-8, a right-to-left override, and a line Jenkins would archive a file for.
NASTY_PRINTF = (r"\033[2J\033]0;pwned\007<script>alert(2)</script> bad \377\376\300 "
                r"rtl:\342\200\256gnp.exe\n[[ATTACHMENT|/etc/passwd]]\n")

pytestmark = pytest.mark.integration


def envs_file(tmp: Path) -> Path:
    data = json.loads((ROOT / "environments.json").read_text())
    data["device_configs"]["dash"] = {
        "description": "console, RTC, pvpanic, a disk and a network device, for both engines",
        "devices": {"serial": {"count": 1}, "rtc": {}, "pvpanic": {},
                    "virtio-blk": {"size_mib": 64}, "virtio-net": {}},
    }
    common = {"arch": "x86_64", "cpus": 1, "memory_mib": 512, "profile": "linux",
              "image": "debian-cloud", "devices": "dash", "kernel_args": [],
              "boot_timeout_s": 90}
    data["environments"] = {
        "qemu-dash": {**common, "engine": "qemu", "accel": "auto", "blocking": True,
                      "dimensions": {"device_type": "QEMU", "cpu": "x64", "pool": "dash"}},
        "crosvm-dash": {**common, "engine": "crosvm", "accel": "kvm", "blocking": False,
                        "disable_sandbox": True,
                        "dimensions": {"device_type": "crosvm", "cpu": "x64", "pool": "dash"}},
    }
    path = tmp / "environments.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def spec_file(tmp: Path, name: str, *, first: bool) -> Path:
    both = [{"dimensions": {"device_type": "QEMU", "cpu": "x64", "pool": "dash"}},
            {"dimensions": {"device_type": "crosvm", "cpu": "x64", "pool": "dash"}}]
    qemu = both[:1]
    entries = [{"test": {"name": "device_enumeration.devices"}, "environments": both},
               {"test": {"name": "peripherals.block"}, "environments": both}]
    if first:
        entries += [
            {"test": {"name": "peripherals.network"}, "environments": both},
            {"test": {"name": "peripherals.rng"}, "environments": both},
            {"test": {"name": "workflow.fails_once"}, "environments": qemu},
            {"test": {"name": NASTY, "path": "/bin/sh",
                      "args": ["-c", f"printf '{NASTY_PRINTF}'; exit 1"],
                      "timeout_secs": 60}, "environments": qemu},
        ]
    path = tmp / name
    path.write_text(json.dumps(entries, indent=1))
    return path


class Runs:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.first = base / "run1"
        self.second = base / "run2"
        self.report = base / "report"
        self.procs: dict[str, subprocess.CompletedProcess[str]] = {}
        self.summary_md = base / "step-summary.md"


def harness(*args: str, env: dict[str, str] | None = None, timeout: float = 1200
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    base = tmp_path_factory.mktemp("dash")
    r = Runs(base)
    envs = envs_file(base)
    tmp = Path(tempfile.mkdtemp(prefix="hd-", dir="/tmp"))
    env = {"HARNESS_CROSVM": str(DOUBLE), "TMPDIR": str(tmp),
           "HARNESS_TEST_COUNTER": str(base / "counter"), "NO_COLOR": ""}
    for key in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "GITLAB_CI", "HARNESS_JUNIT_FILE"):
        os.environ.pop(key, None)
    try:
        common = ["run", "--environments", str(envs), "--suite-path", str(SUITES),
                  "--jobs", "2"]
        r.procs["run1"] = harness(*common, "--tests", str(spec_file(base, "t1.json", first=True)),
                                  "--retries", "1", "--out", str(r.first), env=env)
        sys.stderr.write(r.procs["run1"].stderr[-6000:])
        # The second run as GitHub Actions would run it: annotations and a step summary.
        r.procs["run2"] = harness(*common, "--tests", str(spec_file(base, "t2.json", first=False)),
                                  "--out", str(r.second),
                                  env={**env, "GITHUB_ACTIONS": "true",
                                       "GITHUB_STEP_SUMMARY": str(r.summary_md),
                                       "GITHUB_WORKSPACE": str(ROOT)})
        sys.stderr.write(r.procs["run2"].stderr[-3000:])
        r.procs["report"] = harness("report", str(r.first), str(r.second), "--out",
                                    str(r.report))
        yield r
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def make_driver(profile: Path, *, scripts: bool = True) -> WebDriver:
    for path in (CHROMIUM, CHROMEDRIVER):
        assert Path(path).exists(), f"{path} is missing: ./dev setup installs chromium and " \
                                    "chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(arg)
    if not scripts:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    driver = make_driver(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: WebDriver, path: Path) -> None:
    assert path.is_file(), path
    driver.get(path.resolve().as_uri())


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


# -- the runs and the terminal ---------------------------------------------------------------


def test_runs_did_what_the_scenario_needs(runs: Runs) -> None:
    run = load_summary(runs.first / "summary.json")
    by = {r.key: r for r in run.results}
    assert runs.procs["run1"].returncode == 1, "the hostile program fails on a blocking env"
    assert by["qemu-dash/workflow.fails_once"].flaky
    assert by["crosvm-dash/device_enumeration.devices"].status.value == "FAIL"
    assert by["qemu-dash/device_enumeration.devices"].status.value == "PASS"
    assert by["crosvm-dash/peripherals.network"].status.value == "SKIP"
    assert by["crosvm-dash/peripherals.block"].status.value == "PASS"
    assert runs.procs["report"].returncode == 0, runs.procs["report"].stderr


def test_terminal_summarises_skips_and_repeats_failures_at_the_end(runs: Runs) -> None:
    err = runs.procs["run1"].stderr
    lines = err.splitlines()
    assert not [ln for ln in lines if re.match(r"\[\s*\d+/\d+\] SKIP", ln)], \
        "skips are summarised, not listed one by one"
    at = lines.index(next(ln for ln in lines if ln.startswith("skipped ")))
    assert re.match(r"skipped 3, by reason:", lines[at])
    reasons = lines[at + 1: at + 3]
    assert any(re.match(r"\s+2\s+.*virtio-rng", ln) for ln in reasons), reasons
    assert any(re.match(r"\s+1\s+.*TAP", ln) for ln in reasons), reasons
    tail = lines[lines.index("failed 2:"):]
    assert any("crosvm-dash device_enumeration.devices (FYI)" in ln for ln in tail)
    assert any(ln.strip().startswith("repro:") and "-k" in ln for ln in tail)
    assert tail[-1].startswith("harness: ") and "report: " in tail[-1]
    assert "\x1b" not in err, "no colour and no raw escape when stderr is not a terminal"


def test_github_annotations_and_step_summary(runs: Runs) -> None:
    out = runs.procs["run2"].stdout
    warnings = [ln for ln in out.splitlines() if ln.startswith("::warning ")]
    assert any("file=suites/device_enumeration.py" in ln and
               "crosvm-dash device_enumeration.devices%3A FAIL" in ln for ln in warnings), out
    md = runs.summary_md.read_text()
    assert "#### Failures" in md and "crosvm-dash" in md
    assert "#### Differential" in md and "virtio-net" in md


def test_harness_diff_on_the_terminal(runs: Runs) -> None:
    proc = harness("diff", str(runs.first))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "crosvm-dash (crosvm) vs qemu-dash (qemu)" in proc.stdout
    assert re.search(r"DIFFERS\s+device_enumeration\.devices\s+FAIL\s+PASS", proc.stdout)
    assert "device virtio-net: only qemu-dash presents it" in proc.stdout
    assert re.search(r"block write \(MB/s\)\s+[\d.]+\s+[\d.]+\s+[\d.]+x", proc.stdout)
    data = json.loads(harness("diff", str(runs.first), "--json").stdout)
    [pair] = data["pairs"]
    assert data["differs"] is True
    assert {"kind": "virtio-net", "left": 0, "right": 1, "only": "right"} in pair["devices"]
    # The same environment across the two runs: the same verdicts, so exit 0.
    same = harness("diff", str(runs.first), str(runs.second), "--env", "qemu-dash",
                   "--env", "qemu-dash")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "verdict: the same on every pair compared" in same.stdout
    bad = harness("diff", str(runs.first), "--env", "qemu-dash", "--env", "nope")
    assert bad.returncode == 2 and "no environment 'nope'" in bad.stderr


def test_junit_attachments_and_file_attributes(runs: Runs,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    text = (runs.first / "junit.xml").read_text()
    for xsd in SCHEMAS:
        if xsd.exists():
            xmlschema.XMLSchema(str(xsd)).validate(str(runs.first / "junit.xml"))
    assert " file=" not in text, "outside GitLab, junit.xml stays valid: no file attribute"
    attached = re.findall(r"^\[\[ATTACHMENT\|(.+)\]\]$", text, re.MULTILINE)
    assert attached and all((ROOT / p).is_file() or Path(p).is_file() for p in attached)
    assert any(p.endswith("crosvm-dash/device_enumeration.devices/serial.log")
               for p in attached)
    assert "/etc/passwd" not in attached, "a guest's attachment line must not be honoured"
    assert "[[ATTACHMENT |/etc/passwd]]" in text
    # As GitLab CI writes it: `file` attributes, which junit-10.xsd does not allow.
    monkeypatch.setenv("CI_PROJECT_DIR", str(ROOT))
    gitlab = junit_string(load_summary(runs.first / "summary.json"), file_attributes=True)
    root = ET.fromstring(gitlab.encode())
    files = {tc.get("file") for tc in root.iter("testcase")}
    assert "suites/device_enumeration.py" in files and "suites/peripherals.py" in files
    stock = xmlschema.XMLSchema(str(SCHEMAS[0]))
    assert not stock.is_valid(gitlab), "junit-10.xsd rejects `file`: why it is opt-in"
    extended = SCHEMAS[0].read_text().replace(
        '<xs:attribute name="group" type="xs:string"/>\n        </xs:complexType>\n    '
        '</xs:element>\n\n    <xs:element name="testsuite">',
        '<xs:attribute name="group" type="xs:string"/>\n            '
        '<xs:attribute name="file" type="xs:string"/>\n        </xs:complexType>\n    '
        '</xs:element>\n\n    <xs:element name="testsuite">', 1)
    assert extended != SCHEMAS[0].read_text()
    xmlschema.XMLSchema(extended).validate(gitlab)


# -- the pages in Chromium -------------------------------------------------------------------


def test_every_page_validates_as_html(runs: Runs) -> None:
    pages = [runs.first / "report.html", runs.second / "report.html",
             *sorted(runs.report.glob("*.html"))]
    assert len(pages) == 5
    for p in pages:
        html5lib.HTMLParser(strict=True).parse(p.read_bytes())  # raises on any parse error
        text = p.read_text()
        assert len(re.findall(r"<script\b", text)) == 1, f"{p}: only the report's own script"


def test_failing_test_is_visible_with_its_message(runs: Runs, browser: WebDriver) -> None:
    open_page(browser, runs.first / "report.html")
    failures = browser.find_element(By.ID, "failures")
    articles = failures.find_elements(By.CSS_SELECTOR, "article.failure")
    enum = next(a for a in articles if "crosvm-dash / device_enumeration.devices" in a.text)
    assert enum.is_displayed()
    message = enum.find_element(By.CSS_SELECTOR, ".message")
    assert message.is_displayed() and "virtio-net" in message.text, message.text
    flaky = next(a for a in articles if "workflow.fails_once" in a.text)
    assert "FLAKY" in flaky.text and "first attempt fails on purpose" in flaky.text
    # The files it links to are there.
    for link in enum.find_elements(By.CSS_SELECTOR, "ul.links a"):
        target = Path(link.get_attribute("href").removeprefix("file://"))
        assert target.is_file(), target
    assert {a.text for a in enum.find_elements(By.CSS_SELECTOR, "ul.links a")} >= {
        "serial log", "VMM command", "repro.sh", "device enumeration"}
    repro = enum.find_element(By.CSS_SELECTOR, "pre.repro")
    assert "--env crosvm-dash" in repro.text
    browser.save_screenshot(str(runs.first / "report-screenshot.png"))
    width, height = png_size(runs.first / "report-screenshot.png")
    assert width == 1280 and height > 600


def test_differential_names_the_device_the_engines_disagree_on(runs: Runs,
                                                               browser: WebDriver) -> None:
    open_page(browser, runs.first / "report.html")
    section = browser.find_element(By.ID, "differential")
    devices = section.find_element(By.CSS_SELECTOR, "table.diff-devices")
    row = next(tr for tr in devices.find_elements(By.CSS_SELECTOR, "tbody tr")
               if tr.text.startswith("virtio-net"))
    assert "only qemu-dash presents it" in row.text
    tests = section.find_element(By.CSS_SELECTOR, "table.diff-tests")
    assert "device_enumeration.devices" in tests.text
    metrics = section.find_element(By.CSS_SELECTOR, "table.diff-metrics").text
    for label in ("boot to shell", "block write", "block read", "VMM CPU"):
        assert label in metrics
    browser.execute_script("arguments[0].scrollIntoView()", section)
    shot = runs.first / "differential-screenshot.png"
    section.screenshot(str(shot))
    width, height = png_size(shot)
    assert width > 800 and height > 400
    # HARNESS_DOCS_SCREENSHOT=docs/report-differential.png refreshes the README's picture.
    docs = os.environ.get("HARNESS_DOCS_SCREENSHOT")
    if docs:
        shutil.copyfile(shot, ROOT / docs)


def test_plots_have_a_point_per_run(runs: Runs, browser: WebDriver) -> None:
    open_page(browser, runs.report / "index.html")
    trends = browser.find_element(By.ID, "trends")
    for n, env in enumerate(("crosvm-dash", "qemu-dash")):
        block = trends.find_element(By.ID, f"env-{n}")
        assert block.text.startswith(env)
        boot, cpu = block.find_elements(By.CSS_SELECTOR, "figure.plot svg")
        for plot in (boot, cpu):
            points = plot.find_elements(By.CSS_SELECTOR, "circle.pt")
            assert [p.get_attribute("data-run") for p in points] == ["0", "1"]
            assert all(float(p.get_attribute("data-value")) > 0 for p in points)
    ready = browser.find_element(By.ID, "readiness-table").text
    assert "crosvm-dash" in ready and "seen in 2 of the 5 runs needed" in ready
    # The per-run page the index links to opens.
    browser.find_element(By.LINK_TEXT, "run1").click()
    assert browser.find_element(By.ID, "failures").is_displayed()
    open_page(browser, runs.report / "index.html")
    browser.save_screenshot(str(runs.report / "index-screenshot.png"))


def test_sorting_and_filtering(runs: Runs, browser: WebDriver) -> None:
    open_page(browser, runs.first / "report.html")
    table = browser.find_element(By.ID, "tests-table")

    def visible_rows() -> list:
        return [r for r in table.find_elements(By.CSS_SELECTOR, "tbody tr") if r.is_displayed()]

    total = len(visible_rows())
    assert total == 10
    form = browser.find_element(By.CSS_SELECTOR, "form.filters")
    assert form.is_displayed(), "the script shows the filters"
    search = form.find_element(By.CSS_SELECTOR, "input[type=search]")
    search.send_keys("fails_once")
    rows = visible_rows()
    assert len(rows) == 1 and "FLAKY" in rows[0].text
    assert form.find_element(By.CSS_SELECTOR, ".count").text == f"1 of {total} shown"
    search.clear()
    search.send_keys(" ")  # an input event after clear()
    search.clear()
    Select(form.find_element(By.CSS_SELECTOR, "select")).select_by_value("SKIP")
    assert all("SKIP" in r.text for r in visible_rows()) and len(visible_rows()) == 3
    Select(form.find_element(By.CSS_SELECTOR, "select")).select_by_value("")
    assert len(visible_rows()) == total
    heading = table.find_element(By.XPATH, ".//th[normalize-space()='Duration s']//button")
    heading.click()
    durations = [float(r.find_elements(By.TAG_NAME, "td")[3].get_attribute("data-sort"))
                 for r in visible_rows()]
    assert durations == sorted(durations) and durations[0] < durations[-1]
    heading.click()
    durations = [float(r.find_elements(By.TAG_NAME, "td")[3].get_attribute("data-sort"))
                 for r in visible_rows()]
    assert durations == sorted(durations, reverse=True)


def test_hostile_guest_output_renders_inertly(runs: Runs, browser: WebDriver) -> None:
    open_page(browser, runs.first / "report.html")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - the property raises when no alert is up
    assert browser.execute_script("return document.scripts.length") == 1
    assert browser.title.startswith("harness run run1")
    article = next(a for a in browser.find_elements(By.CSS_SELECTOR, "article.failure")
                   if "nasty" in a.text)
    assert NASTY in article.text, "the test's name is shown as text"
    serial = article.find_element(By.CSS_SELECTOR, "pre.serial").text
    assert "\\x1b[2J" in serial and "\\x1b]0;pwned\\x07" in serial
    assert "<script>alert(2)</script>" in serial
    assert "\ufffd" in serial, "invalid UTF-8 shows as the replacement character"
    assert "\\u202e" in serial and "\u202e" not in browser.page_source
    assert "\x1b" not in browser.page_source


def test_with_scripts_off_the_content_is_all_there(runs: Runs,
                                                   tmp_path_factory: pytest.TempPathFactory
                                                   ) -> None:
    driver = make_driver(tmp_path_factory.mktemp("chromium-noscript"), scripts=False)
    try:
        open_page(driver, runs.first / "report.html")
        assert driver.execute_script("return document.documentElement.dataset.script || ''") \
            == "", "the report's script must not have run"
        enum = next(a for a in driver.find_elements(By.CSS_SELECTOR, "article.failure")
                    if "crosvm-dash / device_enumeration.devices" in a.text)
        assert "virtio-net" in enum.find_element(By.CSS_SELECTOR, ".message").text
        assert not driver.find_element(By.CSS_SELECTOR, "form.filters").is_displayed()
        rows = driver.find_elements(By.CSS_SELECTOR, "#tests-table tbody tr")
        assert len(rows) == 10 and all(r.is_displayed() for r in rows)
        assert "only qemu-dash presents it" in driver.find_element(By.ID, "differential").text
        open_page(driver, runs.report / "index.html")
        assert driver.find_elements(By.CSS_SELECTOR, "#env-0 circle.pt")
    finally:
        driver.quit()


def test_nothing_left_behind(runs: Runs) -> None:
    left = subprocess.run(["pgrep", "-af", f"qemu-system.*{runs.base}"],
                          capture_output=True, text=True, check=False).stdout
    assert not left.strip(), left
