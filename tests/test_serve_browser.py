"""fastcnn-serve's page in a real browser: Debian's Chromium driven by Selenium. A model trained for
a few hundred steps on real MNIST is served; a digit drawn on the canvas with pointer events and an
image file dropped on the page must each be read as the right class. A screenshot of the page is
saved next to the test's temporary files (its path is printed)."""
from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from fastcnn.checkpoint import save_checkpoint
from fastcnn.data import load_dataset, to_float
from fastcnn.model import mnist_cnn
from fastcnn.optim import AdamW

from serve_helpers import Server

webdriver = pytest.importorskip("selenium.webdriver", reason="the browser extra is not installed: "
                                "pip install -e '.[browser]'")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("Chromium is not installed: apt-get install chromium chromium-driver", allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_dataset("mnist", data_dir=mnist_dir)


@pytest.fixture(scope="module")
def model_path(mnist, tmp_path_factory):
    """mnist_cnn after 300 AdamW steps of 128 real MNIST images (about 98 % on the test set)."""
    model = mnist_cnn(seed=0)
    opt = AdamW(model, lr=2e-3, weight_decay=1e-2)
    order = np.random.default_rng(0).permutation(len(mnist.y_train))
    for step in range(300):
        idx = order[step * 128:(step + 1) * 128]
        model.train_step(to_float(mnist.x_train[idx]), mnist.y_train[idx], opt)
    _, acc = model.evaluate(to_float(mnist.x_test[:2000]), mnist.y_test[:2000])
    assert acc > 0.95, acc
    path = tmp_path_factory.mktemp("browser") / "model.npz"
    save_checkpoint(path, model, None, epoch=0, history=[], config={"dataset": "mnist"}, rngs={},
                    model_kwargs={"dropout": 0.5, "dtype": "float32"})
    return path


@pytest.fixture(scope="module")
def server(model_path):
    s = Server(model_path)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=430,1400"):                                  # a phone's width
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def answer_after(driver, previous: int, timeout=60) -> str:
    """Wait until the page has shown more than ``previous`` answers and none is pending; the class shown."""
    def settled(d):
        body = d.find_element(By.TAG_NAME, "body")
        return (int(body.get_attribute("data-answers") or 0) > previous
                and body.get_attribute("data-busy") == "0")
    WebDriverWait(driver, timeout).until(settled)
    shown = driver.find_element(By.ID, "predicted").text
    assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-predicted") == shown
    return shown


def answers(driver) -> int:
    return int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-answers") or 0)


def draw(driver, strokes):
    """Draw ``strokes`` (lists of (x, y) in 0..1 of the pad) with the mouse's pointer events."""
    pad = driver.find_element(By.ID, "pad")
    w, h = pad.size["width"], pad.size["height"]
    for points in strokes:
        chain = ActionChains(driver, duration=20)
        (x0, y0), rest = points[0], points[1:]
        chain.move_to_element_with_offset(pad, int((x0 - 0.5) * w), int((y0 - 0.5) * h)).click_and_hold()
        px, py = x0, y0
        for x, y in rest:
            for t in np.linspace(0, 1, 6)[1:]:                      # several moves per segment, as a hand makes
                chain.move_by_offset(int(round((px + (x - px) * t) * w)) - int(round((px + (x - px) * (t - 0.2)) * w)),
                                     int(round((py + (y - py) * t) * h)) - int(round((py + (y - py) * (t - 0.2)) * h)))
            px, py = x, y
        chain.release().perform()


def test_drawing_a_digit_shows_its_class(server, browser, tmp_path_factory):
    browser.get(server.url)
    assert browser.find_element(By.ID, "predicted").text == "-"
    before = answers(browser)
    draw(browser, [[(0.25, 0.2), (0.75, 0.2), (0.4, 0.85)]])            # a 7: the top bar, then the stem
    assert answer_after(browser, before) == "7"
    assert browser.find_element(By.ID, "map0-caption").text.startswith("layer 1 ReLU")
    bar = browser.find_element(By.CSS_SELECTOR, ".bar.top .fill")
    assert bar.size["width"] > 0.5 * browser.find_element(By.CSS_SELECTOR, ".bar.top .track").size["width"]
    folder = tmp_path_factory.mktemp("screenshot")
    browser.save_screenshot(str(folder / "fastcnn_serve_phone.png"))
    browser.set_window_size(1100, 1400)
    browser.save_screenshot(str(folder / "fastcnn_serve_wide.png"))
    browser.set_window_size(430, 1400)
    print(f"screenshots: {folder}/fastcnn_serve_phone.png, fastcnn_serve_wide.png")
    assert (folder / "fastcnn_serve_wide.png").stat().st_size > 10_000

    browser.find_element(By.ID, "clear").click()
    assert browser.find_element(By.ID, "predicted").text == "-"
    before = answers(browser)
    draw(browser, [[(0.5, 0.15), (0.5, 0.85)]])                          # a 1
    assert answer_after(browser, before) == "1"


def test_dropping_an_image_file_shows_its_class(server, browser, mnist):
    browser.get(server.url)
    k = int(np.flatnonzero(mnist.y_test == 3)[0])
    digit = Image.fromarray(255 - mnist.x_test[k, 0]).resize((112, 112))     # dark ink on white, 4x larger
    buf = io.BytesIO()
    digit.save(buf, format="PNG")
    before = answers(browser)
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "three.png", {type: "image/png"}));
        document.getElementById("pad").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true,
                                                                          cancelable: true}));
    """, base64.b64encode(buf.getvalue()).decode())
    assert answer_after(browser, before) == "3"
    assert "inverted" in browser.find_element(By.ID, "status").text
