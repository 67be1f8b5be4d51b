"""The web UI (GET /playground) in a real headless browser: Debian's chromium driven by Playwright.

One server (the built-in shapes_sd, explicit model control) and one browser for the module; each test opens its
own context (a fresh IndexedDB); the last one unloads the model. Screenshots of the page are compared with
those in docs/ for gross breakage only (a small, blurred thumbnail per screenshot):
SDSERVE_UPDATE_SCREENSHOTS=1 writes them there instead.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import playwright.sync_api as playwright_api
import pytest
from PIL import Image, ImageChops, ImageFilter, ImageStat

from sdserve_server import FIXTURE_REPOSITORY, PROJECT_ROOT, make_repository, serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOCS = PROJECT_ROOT / "docs"
UPDATE_SCREENSHOTS = os.environ.get("SDSERVE_UPDATE_SCREENSHOTS") == "1"
DESKTOP = {"width": 1400, "height": 860}
PHONE = {"width": 390, "height": 844}
# It draws what the prompt says, so the screenshots show something.
MODEL = "shapes_sd"
READY = f"document.getElementById('model').value === '{MODEL}' && document.querySelector('#param-steps')"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/test.sh installs it)")


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repository = make_repository(tmp_path_factory.mktemp("web_ui") / "repo",
                                 {MODEL: PROJECT_ROOT / "model_repository" / MODEL,
                                  "add_sub": FIXTURE_REPOSITORY / "add_sub",
                                  "initialize_fails": FIXTURE_REPOSITORY / "initialize_fails"})
    with serving(repository, "--model-control-mode", "explicit", "--load-model", MODEL) as addresses:
        yield f"http://{addresses.http}"


@pytest.fixture(scope="module")
def browser() -> Iterator[playwright_api.Browser]:
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


class PageWatch:
    """What went wrong while a page ran: script errors and failed requests (any 4xx/5xx)."""

    def __init__(self, page: playwright_api.Page) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"script error: {error}"))
        page.on("response", lambda response: response.status >= 400 and self.errors.append(
            f"{response.status} {response.request.method} {response.url}"))


def open_page(context: playwright_api.BrowserContext, url: str) -> tuple[playwright_api.Page, PageWatch]:
    page = context.new_page()
    watch = PageWatch(page)
    page.goto(f"{url}/playground")
    page.wait_for_function(READY)
    return page, watch


def wait_done(page: playwright_api.Page) -> str:
    page.wait_for_function("['done', 'failed'].includes(document.getElementById('status').dataset.state)", timeout=60_000)
    return page.inner_text("#status")


def compare_screenshot(page: playwright_api.Page, name: str, tmp_path: Path, *, full_page: bool = False) -> None:
    """Saves the screenshot; unless updating, holds it to docs/<name> for gross breakage."""
    shot = tmp_path / name
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shot), full_page=full_page)
    image = Image.open(shot).convert("L")
    assert ImageStat.Stat(image).stddev[0] > 8, f"{name} is (nearly) blank"
    if UPDATE_SCREENSHOTS:
        shutil.copy(shot, DOCS / name)
        return
    reference = Image.open(DOCS / name).convert("L")
    assert reference.size == image.size, f"{name}: {image.size}, the reference is {reference.size}"

    def thumbnail(picture: Image.Image) -> Image.Image:
        return picture.filter(ImageFilter.GaussianBlur(6)).resize((48, 32))

    difference = ImageStat.Stat(ImageChops.difference(thumbnail(image), thumbnail(reference))).mean[0]
    assert difference < 24, f"{name} differs from docs/{name} by {difference:.1f} grey levels on average"


def box(page: playwright_api.Page, selector: str) -> dict[str, float]:
    found = page.locator(selector).bounding_box()
    assert found is not None, f"{selector} is not shown"
    return found


def test_generate_keep_history_reuse_and_errors(browser: playwright_api.Browser, server_url: str, tmp_path: Path) -> None:
    context = browser.new_context(viewport=DESKTOP, color_scheme="light")
    page, watch = open_page(context, server_url)

    # The form is the model's declared parameters, with their ranges and defaults.
    declared = json.load(urllib.request.urlopen(f"{server_url}/v2/models/{MODEL}/capabilities"))["parameters"]
    shown = page.eval_on_selector_all("#fields [data-param]", "controls => controls.map((c) => c.dataset.param)")
    assert sorted([*shown, "loras"]) == sorted(declared), "every declared parameter is a field, LoRAs their own rows"
    assert page.get_attribute("#param-steps", "max") == str(declared["steps"]["maximum"])
    assert page.get_attribute("#param-steps", "placeholder") == str(declared["steps"]["default"])
    assert page.get_attribute("#count", "max") == "4"

    # Generate with Ctrl+Enter; the seed is left to the server.
    page.fill("#prompt", "a red circle on a blue background")
    page.fill("#param-steps", "8")
    page.fill("#count", "2")
    page.press("#prompt", "Control+Enter")
    status = wait_done(page)
    match = re.fullmatch(r"done in \d+\.\d\d s \(seed (\d+)\)", status)
    assert match, status
    seed = match.group(1)
    assert page.inner_text("#error") == ""
    sizes = page.eval_on_selector_all("#result img", "images => images.map((i) => [i.naturalWidth, i.naturalHeight])")
    assert sizes == [[128, 128], [128, 128]]
    assert page.locator("#gallery button").count() == 2
    compare_screenshot(page, "web-ui-desktop.png", tmp_path)

    # The history survives a reload, with each image's parameters read from its PNG.
    page.reload()
    page.wait_for_function("document.querySelectorAll('#gallery button').length === 2")
    page.wait_for_function("document.querySelector('#param-steps')")
    page.click("#gallery button >> nth=0")
    text = page.inner_text("#details-text")
    assert text.startswith("a red circle on a blue background\nSteps: 8, Sampler: ")
    assert f"Seed: {seed}, Size: 128x128, Model: {MODEL}, Batch size: 2, Batch pos: 1" in text
    assert page.get_attribute("#download", "download") == f"sdserve_{seed}_1.png"
    page.click("#reuse-seed")
    assert page.input_value("#param-seed") == seed
    assert page.input_value("#param-steps") == ""

    page.fill("#prompt", "something else")
    page.fill("#negative_prompt", "something")
    page.click("#gallery button >> nth=1")
    page.click("#reuse-all")
    assert page.input_value("#prompt") == "a red circle on a blue background"
    assert page.input_value("#negative_prompt") == ""
    assert [page.input_value(f"#param-{name}") for name in ("steps", "width", "height", "seed")] == ["8", "128", "128", seed]

    # The same parameters (the same batch of two) make the same images.
    assert page.input_value("#count") == "2"
    page.click("#generate")
    assert wait_done(page).endswith(f"(seed {seed})")
    files = page.evaluate("""async () => Promise.all([...document.querySelectorAll('#gallery img')].map(async (image) =>
      Array.from(new Uint8Array(await (await fetch(image.src)).arrayBuffer())).join()))""")
    assert len(files) == 4
    assert files[:2] == files[2:], "reusing an image's parameters made the same PNGs"

    # A request the server refuses: its message is shown, the status says so, and the page recovers.
    page.fill("#param-steps", "5000")
    page.click("#generate")
    assert wait_done(page) == "failed"
    assert "steps" in page.inner_text("#error")
    assert page.is_enabled("#generate")
    page.fill("#param-steps", "2")
    page.fill("#negative_prompt", "a yellow star")
    page.click("#generate")
    assert wait_done(page).startswith("done in ")
    assert page.inner_text("#error") == ""
    page.click("#gallery button >> nth=0")
    assert page.inner_text("#details-text").startswith(
        "a red circle on a blue background\nNegative prompt: a yellow star\nSteps: 2, ")
    assert watch.errors == [], watch.errors
    context.close()


def test_phone_layout_and_dark_mode(browser: playwright_api.Browser, server_url: str, tmp_path: Path) -> None:
    context = browser.new_context(viewport=PHONE, color_scheme="dark", device_scale_factor=1, has_touch=True)
    page, watch = open_page(context, server_url)
    page.fill("#prompt", "a yellow star on a green background")
    page.fill("#param-steps", "8")
    page.fill("#param-seed", "3")
    page.click("#generate")
    assert wait_done(page).startswith("done in ")

    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than the phone"
    wide = page.evaluate("""() => [...document.querySelectorAll('body *')].filter((e) => e.offsetParent !== null)
      .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5).map((e) => e.id || e.tagName)""")
    assert wide == [], f"elements past the right edge: {wide}"
    # One column: the form, then the output, then the history, each the page's width.
    controls, output, history = box(page, "#controls"), box(page, "#output"), box(page, "#history")
    assert controls["y"] < output["y"] < history["y"]
    for panel in (controls, output, history):
        assert panel["width"] > PHONE["width"] - 40
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(17, 18, 22)", f"dark scheme background: {background}"
    compare_screenshot(page, "web-ui-phone-dark.png", tmp_path, full_page=True)

    # The toggle overrides the system's scheme, and is remembered.
    page.click("#theme")  # auto -> dark
    page.click("#theme")  # dark -> light
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(244, 245, 247)"
    page.reload()
    page.wait_for_function(READY)
    assert page.inner_text("#theme") == "Theme: light"
    assert watch.errors == [], watch.errors
    context.close()


def test_image_inputs_mask_and_loras(browser: playwright_api.Browser, server_url: str, tmp_path: Path) -> None:
    """The model declares image_to_image and inpaint, and `loras`: the page shows their controls and
    sends the generate route's fields (`image`, `mask` as base64 files, `strength`, `loras`)."""
    context = browser.new_context(viewport=DESKTOP, color_scheme="light")
    page, watch = open_page(context, server_url)
    assert page.is_visible("#image-inputs") and page.is_visible("#loras")
    assert page.is_hidden("#mask-canvas"), "the mask brush comes with an image"
    picture = Image.new("RGB", (128, 128), (30, 60, 220))
    picture.paste((220, 30, 30), (40, 40, 88, 88))
    picture.save(tmp_path / "input.png")
    page.set_input_files("#image-file", str(tmp_path / "input.png"))
    page.wait_for_selector("#mask-canvas", state="visible")
    mask = box(page, "#mask-canvas")
    page.mouse.move(mask["x"] + mask["width"] * 0.3, mask["y"] + mask["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(mask["x"] + mask["width"] * 0.7, mask["y"] + mask["height"] * 0.5, steps=8)
    page.mouse.up()
    page.fill("#prompt", "a yellow star on a blue background")
    page.fill("#param-steps", "8")
    page.fill("#param-strength", "0.9")
    page.fill("#param-seed", "5")
    with page.expect_request("**/generate_stream") as sent:
        page.click("#generate")
    body = json.loads(sent.value.post_data or "{}")
    assert body["strength"] == 0.9 and body["seed"] == 5
    assert len(body["image"]) == 1 and len(body["mask"]) == 1
    assert base64.b64decode(body["image"][0]) == (tmp_path / "input.png").read_bytes()
    painted = Image.open(io.BytesIO(base64.b64decode(body["mask"][0]))).convert("L")
    assert painted.size == (128, 128)
    assert painted.getpixel((64, 64)) == 255 and painted.getpixel((64, 10)) == 0, "white where painted, black elsewhere"
    assert wait_done(page).startswith("done in "), page.inner_text("#error")
    assert page.eval_on_selector("#result img", "image => [image.naturalWidth, image.naturalHeight]") == [128, 128]
    compare_screenshot(page, "web-ui-inpaint.png", tmp_path)

    # A LoRA the model does not have: the server's answer names the ones it has.
    page.click("#lora-add")
    page.fill("#lora-rows .lora-name", "no_such_lora")
    with page.expect_request("**/generate_stream") as sent:
        page.click("#generate")
    assert json.loads(json.loads(sent.value.post_data or "{}")["loras"]) == [{"name": "no_such_lora", "scale": 1}]
    assert wait_done(page) == "failed"
    assert "no_such_lora" in page.inner_text("#error")
    watch.errors = [error for error in watch.errors if "/generate_stream" not in error]
    assert watch.errors == [], watch.errors
    context.close()


def test_reads_server_sent_events_split_anywhere(browser: playwright_api.Browser, server_url: str) -> None:
    context = browser.new_context()
    page, _ = open_page(context, server_url)
    mismatches = page.evaluate("""async () => {
      const events = [{ queue: { position: 2 } }, { progress: { step: 1, steps: 2 } }, { generated_image: ['x'.repeat(5000)] }];
      const wrong = [];
      for (const end of ['\\n', '\\r\\n', '\\r']) {
        const text = events.map((event) => `data: ${JSON.stringify(event)}${end}${end}`).join('');
        for (const cuts of [[1], [text.indexOf(end) + 1], [7, 100, 2000, text.length - 1]]) {
          const pieces = [0, ...cuts].map((start, index) => text.slice(start, [...cuts, text.length][index]));
          const body = new ReadableStream({ start(controller) {
            for (const piece of pieces) controller.enqueue(new TextEncoder().encode(piece));
            controller.close();
          } });
          const read = [];
          await readEvents(new Response(body), (event) => read.push(event));
          if (JSON.stringify(read) !== JSON.stringify(events)) wrong.push(`${JSON.stringify(end)} cut at ${cuts}`);
        }
      }
      return wrong;
    }""")
    assert mismatches == []
    context.close()


def test_wide_layout_and_model_control(browser: playwright_api.Browser, server_url: str, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 1920, "height": 1000})
    page, watch = open_page(context, server_url)
    controls, output, history = box(page, "#controls"), box(page, "#output"), box(page, "#history")
    assert controls["x"] + controls["width"] <= output["x"]
    assert output["x"] + output["width"] <= history["x"], "three columns on a wide screen"
    assert abs(controls["y"] - history["y"]) < 2

    # Load and unload models from the page (explicit model control): a plain Triton model, quick
    # to load, then the image model, which leaves the page nothing to generate with.
    page.click("#open-models")
    plain = page.locator("#model-table tr[data-model='add_sub']")
    plain.locator("button", has_text="Load").click()
    plain.locator("button", has_text="Unload").wait_for(timeout=60_000)
    assert "READY" in plain.inner_text()
    assert page.locator("#model option").all_inner_texts() == [MODEL], "the model list holds image models only"
    plain.locator("button", has_text="Unload").click()
    plain.locator("button", has_text="Load").wait_for(timeout=60_000)
    # A model that fails to load: the server's reason is shown.
    page.locator("#model-table tr[data-model='initialize_fails'] button", has_text="Load").click()
    page.wait_for_function("document.getElementById('models-error').textContent.startsWith('load initialize_fails: ')",
                           timeout=60_000)
    assert "weights not found" in page.inner_text("#models-error")
    watch.errors = [error for error in watch.errors if "/initialize_fails/load" not in error]
    image_model = page.locator(f"#model-table tr[data-model='{MODEL}']")
    image_model.locator("button", has_text="Unload").click()
    image_model.locator("button", has_text="Load").wait_for(timeout=60_000)
    page.click("#close-models")
    page.wait_for_function("document.getElementById('model').options.length === 0")
    assert "No text-to-image model is ready" in page.inner_text("#error")
    assert watch.errors == [], watch.errors
    context.close()


def test_reuse_puts_the_refiner_switch_back(browser: playwright_api.Browser, tmp_path: Path) -> None:
    """A base model with a refiner (tiny_sdxl whose config names tiny_sdxl_refiner): an image the refiner
    finished at the config's default switch, reused, puts `Refiner switch at` back into the form's
    high_noise_fraction field, so the same parameters make the same image."""
    models = PROJECT_ROOT / "model_repository"
    base = tmp_path / "tiny_sdxl_refined"
    base.mkdir()
    (base / "config.pbtxt").write_text((models / "tiny_sdxl" / "config.pbtxt").read_text().replace(
        "parameters [", 'parameters [\n  { key: "refiner" value: { string_value: "tiny_sdxl_refiner" } },', 1))
    (base / "1").symlink_to(models / "tiny_sdxl" / "1")
    repository = make_repository(tmp_path / "repo", {base.name: base, "tiny_sdxl_refiner": models / "tiny_sdxl_refiner"})
    with serving(repository, "--model-control-mode", "explicit", "--load-model", base.name) as addresses:
        context = browser.new_context(viewport=DESKTOP)
        page = context.new_page()
        watch = PageWatch(page)
        page.goto(f"http://{addresses.http}/playground")
        page.wait_for_function("document.querySelector('#param-high_noise_fraction')")
        page.fill("#prompt", "a red fox in the snow")
        for name, value in (("steps", "4"), ("width", "64"), ("height", "64"), ("seed", "9")):
            page.fill(f"#param-{name}", value)
        page.click("#generate")
        assert wait_done(page).startswith("done in "), page.inner_text("#error")

        page.fill("#param-high_noise_fraction", "1")
        page.click("#gallery button >> nth=0")
        assert "Refiner: tiny_sdxl_refiner, Refiner switch at: 0.8" in page.inner_text("#details-text")
        page.click("#reuse-all")
        assert page.input_value("#param-high_noise_fraction") == "0.8"
        assert watch.errors == [], watch.errors
        context.close()


def test_api_key_and_restricted_model_control(browser: playwright_api.Browser, tmp_path: Path) -> None:
    """A server with --api-key and its model-repository API restricted: the page asks for the key
    once, works with it, and says that model management is restricted."""
    repository = make_repository(tmp_path / "repo", {"add_sub": FIXTURE_REPOSITORY / "add_sub"})
    with serving(repository, "--model-control-mode", "explicit", "--api-key", "open-sesame-42",
                 "--http-restricted-api", "model-repository:admin-key=open") as addresses:
        context = browser.new_context()
        page = context.new_page()
        asked: list[str] = []

        def answer(dialog: playwright_api.Dialog) -> None:
            asked.append(dialog.message)
            dialog.accept("open-sesame-42")

        page.on("dialog", answer)
        page.goto(f"http://{addresses.http}/playground")
        page.wait_for_function("document.getElementById('error').textContent !== ''")
        assert asked == ["This server needs an API key (--api-key):"]
        assert "No text-to-image model is ready" in page.inner_text("#error")
        page.click("#open-models")
        page.wait_for_function("document.getElementById('models-error').textContent !== ''")
        assert page.inner_text("#models-error").startswith(
            "Model management is restricted on this server: This API is restricted, expecting header 'admin-key'")
        assert asked == ["This server needs an API key (--api-key):"], "the key is asked for once"
        context.close()
