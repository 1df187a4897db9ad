"""The HTML report and diff opened in a real browser (Debian's headless Chromium).

Checks that the page renders without console messages (the page has no script; its
Content-Security-Policy would log any script or fetch it blocked), that the figures in the DOM are
those of `--format json`, that a `<script>` injected into a request target shows as text, and
leaves screenshots in $CLOSETRACE_ARTIFACTS (default: artifacts/ next to the closetrace binary).

    CLOSETRACE=build/closetrace python3 tests/integration/run.py tests/browser/test_report_html.py
"""
import html.parser
import json
import os
import shutil
import subprocess
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "fixtures"))
CLOSETRACE = os.path.abspath(os.environ.get("CLOSETRACE", "build/closetrace"))
ARTIFACTS = os.path.abspath(os.environ.get("CLOSETRACE_ARTIFACTS")
                            or os.path.join(os.path.dirname(CLOSETRACE), "artifacts"))
INJECTED_TARGET = '/pay"><script>alert(1)</script>'
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Headless, offline, no first-run work and nothing fetched in the background.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--enable-logging=stderr",
                  "--v=0"]


def require_chromium():
    if shutil.which("chromium") is None:
        raise unittest.SkipTest("chromium is not installed: the HTML report's browser checks "
                                "need it (apt-get install -y chromium; tools/setup installs it)")
    if not os.path.exists(CLOSETRACE):
        raise RuntimeError(f"{CLOSETRACE} is not built")


def chromium(*args):
    """Runs headless Chromium; returns (stdout, the console lines it logged)."""
    with tempfile.TemporaryDirectory(prefix="closetrace-chromium-",
                                     ignore_cleanup_errors=True) as profile:
        result = subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                                capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise AssertionError(f"chromium exited {result.returncode}: {result.stderr[-2000:]}")
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    return result.stdout, console


def closetrace(*args):
    result = subprocess.run([CLOSETRACE, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"closetrace {' '.join(args)} exited {result.returncode}: "
                             f"{result.stderr}")
    return result.stdout


class Dom(html.parser.HTMLParser):
    """The parts of a dumped DOM the checks need: the figures (data-json: data-value or text),
    the tags seen, the text of the whole page and of each timeline's caption."""

    def __init__(self, dom):
        super().__init__(convert_charrefs=True)
        self.figures = []  # [member, data-value or None, text]
        self.tags = {}
        self.text = []
        self.captions = []
        self._open = []  # [tag, figure or None, in a caption]
        self.feed(dom)
        self.text = "".join(self.text)

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        attributes = dict(attrs)
        figure = None
        if "data-json" in attributes:
            figure = [attributes["data-json"], attributes.get("data-value"), ""]
            self.figures.append(figure)
        if tag == "figcaption":
            self.captions.append("")
        if tag not in ("meta", "br", "img", "input", "link"):
            self._open.append([tag, figure, tag == "figcaption"])

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data):
        self.text.append(data)
        for _, figure, in_caption in self._open:
            if figure is not None:
                figure[2] += data
            if in_caption:
                self.captions[-1] += data


def member(document, dotted):
    for key in dotted.split("."):
        document = document[int(key)] if isinstance(document, list) else document[key]
    return document


class HtmlReportInChromium(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_chromium()
        cls.directory = tempfile.TemporaryDirectory(prefix="closetrace-html-")
        os.makedirs(ARTIFACTS, exist_ok=True)

    @classmethod
    def tearDownClass(cls):
        cls.directory.cleanup()

    def render(self, name, *command):
        """Writes `command --format html -o NAME.html`; returns (the page's path, its JSON)."""
        page = os.path.join(self.directory.name, f"{name}.html")
        closetrace(*command, "--format", "html", "-o", page)
        return page, json.loads(closetrace(*command, "--format", "json"))

    def open_page(self, page):
        dom, console = chromium("--dump-dom", f"file://{page}")
        self.assertEqual(console, [], "the page logged to the console")
        self.assertIn("</svg>", dom)
        return Dom(dom)

    def screenshot(self, page, name):
        path = os.path.join(ARTIFACTS, f"{name}.png")
        if os.path.exists(path):
            os.remove(path)
        _, console = chromium(f"--screenshot={path}", "--window-size=1280,2000",
                              "--hide-scrollbars", f"file://{page}")
        self.assertEqual(console, [])
        with open(path, "rb") as png:
            picture = png.read()
        self.assertTrue(picture.startswith(PNG_SIGNATURE), path)
        # Width and height from the IHDR chunk.
        self.assertEqual((int.from_bytes(picture[16:20], "big"),
                          int.from_bytes(picture[20:24], "big")), (1280, 2000))
        self.assertGreater(len(picture), 20_000, f"{path} looks blank")
        print(f"screenshot: {path}")

    def assert_figures_match(self, dom, document):
        """Every figure in the DOM equals the JSON member it names; returns the members."""
        members = set()
        for name, value, text in dom.figures:
            with self.subTest(figure=name):
                members.add(name)
                expected = member(document, name)
                if value is not None:
                    if value == "null":
                        self.assertIsNone(expected)
                    else:
                        self.assertAlmostEqual(float(value), expected, delta=0.0011)
                elif isinstance(expected, str):
                    self.assertEqual(text, expected)
                else:
                    self.assertEqual(text, json.dumps(expected))
        return members

    def test_report_shows_the_json_figures_and_each_race(self):
        page, report = self.render("report", "report", os.path.join(FIXTURES, "mismatch.jsonl"))
        dom = self.open_page(page)
        members = self.assert_figures_match(dom, report)
        for name in ("conclusion", "recommendations.0.text", "trace.connections",
                     "trace.requests", "idle.this_host.closes", "idle.this_host.median_ms",
                     "idle.peer.closes", "peer_idle_timeout.ms", "early_idle_closes",
                     "races.total", "verdicts.local_close_race.connections"):
            self.assertIn(name, members)
        races = report["races"]["listed"]
        self.assertGreater(len(races), 0)
        self.assertEqual(len(dom.captions), len(races))
        for race, caption in zip(races, dom.captions):
            self.assertIn(f"{race['method']} {race['target']}", caption)
        # Two histogram panels' chart, the verdicts over time, one timeline per race.
        self.assertEqual(dom.tags.get("svg"), 2 + len(races))
        self.assertEqual(dom.tags.get("script", 0), 0)
        self.screenshot(page, "report")

    def test_an_injected_script_is_shown_as_text(self):
        page, report = self.render("injected", "report",
                                   os.path.join(FIXTURES, "html", "injected.jsonl"))
        self.assertEqual(report["races"]["listed"][0]["target"], INJECTED_TARGET)
        dom = self.open_page(page)
        self.assertEqual(dom.tags.get("script", 0), 0)
        self.assertEqual(dom.tags.get("img", 0), 0)
        self.assertIn(f"POST {INJECTED_TARGET}", dom.text)
        self.assertIn(f"POST {INJECTED_TARGET}", dom.captions[0])
        self.assert_figures_match(dom, report)
        self.screenshot(page, "injected")

    def test_diff_puts_the_recordings_side_by_side(self):
        page, diff = self.render("diff", "diff", os.path.join(FIXTURES, "mismatch.jsonl"),
                                 os.path.join(FIXTURES, "fixed.jsonl"))
        dom = self.open_page(page)
        members = self.assert_figures_match(dom, diff)
        for name in ("conclusion", "explanation", "before.conclusion", "after.conclusion",
                     "before.races.total", "after.races.total"):
            self.assertIn(name, members)
        self.assertIn("Before: ", dom.text)
        self.assertIn("After: ", dom.text)
        self.screenshot(page, "diff")


if __name__ == "__main__":
    unittest.main()
