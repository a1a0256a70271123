"""Real servers for tests and scripts: `tftrain serve` (or MLflow's own `mlflow models serve`) on a free port of
127.0.0.1 for as long as a block runs, the checks that a server answers, and multi-worker processes started as a scheduler starts them. Not part
of the package: users get `tftrain serve` and launcher=ray."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(model_uri: str, port: int, args: tuple[str, ...] = (), stock: bool = False) -> list[str]:
    """`tftrain serve` of this environment on 127.0.0.1:`port`, or with `stock` MLflow's `mlflow models serve`
    (`args` then go to it: -w 2)."""
    bin_dir = Path(sys.executable).parent
    if stock:
        return [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
                "-h", "127.0.0.1", "-p", str(port), *args]  # fmt: skip
    return [str(bin_dir / "tftrain"), "serve", "--model-uri", model_uri, "--port", str(port), *args]


@contextlib.contextmanager
def running_server(model_uri: str, log_path: Path, timeout: float = 180.0, args: tuple[str, ...] = (),
                   env: dict[str, str] | None = None, stock: bool = False) -> Iterator[str]:  # fmt: skip
    """`tftrain serve` (or with `stock`, `mlflow models serve`) on a free port of 127.0.0.1 until the block ends;
    yields its base URL. `env` adds to the environment. The output goes to `log_path`, quoted when the server does
    not come up."""
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # MLflow finds uvicorn on the PATH
    environment = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), **(env or {})}
    with open(log_path, "wb") as log:
        server = subprocess.Popen(serve_command(model_uri, port, args, stock), stdout=log, stderr=log, env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not responds(url + "/ping"):
            if server.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the server for {model_uri} did not come up; its output:\n{tail}")
            time.sleep(0.25)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_for_log(log_path: Path, text: str, count: int, timeout: float = 180) -> None:
    """Until a server's log says `text` `count` times (uvicorn's "Application startup complete." once a worker:
    every worker up, not just the first that answers /ping)."""
    deadline = time.monotonic() + timeout
    while log_path.read_text(errors="replace").count(text) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not say {text!r} {count} times; its output:\n"
                               f"{log_path.read_text(errors='replace')[-3000:]}")  # fmt: skip
        time.sleep(0.25)


def responds(url: str) -> bool:
    """Whether `url` answers 200 within 2 seconds (a server's /ping or /health)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def tf_config_workers(n: int, command: list[str], **popen) -> list[subprocess.Popen]:
    """`command` as `n` workers on free ports of 127.0.0.1, each with its TF_CONFIG, as a scheduler (a Kubernetes
    operator, a Slurm script) starts a multi-worker job; `popen` goes to each subprocess.Popen (env: its base)."""
    hosts = [f"127.0.0.1:{free_port()}" for _ in range(n)]
    base = popen.pop("env", None) or os.environ
    return [
        subprocess.Popen(
            command,
            env={
                **base,
                "TF_CONFIG": json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}),
            },
            **popen,
        )  # fmt: skip
        for i in range(n)
    ]


@contextlib.contextmanager
def tracking_ui(backend_store_uri: str, log_path: Path, wait: bool = True) -> Iterator[str]:
    """`mlflow server` (one worker) over `backend_store_uri` on a free port of 127.0.0.1, until the block ends;
    yields its base URL, once it answers (`wait`; else see wait_until_up). It runs in `log_path`'s folder (where
    it may make its artifacts folder); its output goes to `log_path`."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=log, cwd=log_path.parent)
    url = f"http://127.0.0.1:{port}"
    try:
        if wait:
            wait_until_up(url, log_path, server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_until_up(url: str, log_path: Path, server: subprocess.Popen | None = None, timeout: float = 180) -> None:
    """Until the tracking server at `url` answers /health; RuntimeError with its output (`log_path`) if it has
    not after `timeout` seconds or its process (when given) ended."""
    deadline = time.monotonic() + timeout
    while not responds(url + "/health"):
        if (server is not None and server.poll() is not None) or time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server did not come up; its output:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.25)


CHROMIUM = Path("/usr/lib/chromium/chromium")  # the real binary: /usr/bin/chromium is a wrapper adding flags
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@contextlib.contextmanager
def chromium(profile: Path, window: str = "1600,1000"):
    """Headless Chromium (Debian's) under Selenium, with a fresh profile, that looks up no host but 127.0.0.1."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        raise RuntimeError("Chromium is not installed (scripts/test.sh installs Debian's chromium and chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={profile}", f"--window-size={window}",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def page_text(driver, texts: list[str], timeout: float = 60) -> str:
    """The page's text once it shows every one of `texts`, or after `timeout` seconds (the caller asserts)."""
    deadline = time.monotonic() + timeout
    while True:
        body = driver.find_element("tag name", "body").text
        if all(text in body for text in texts) or time.monotonic() > deadline:
            return body
        time.sleep(0.5)


def choose_axes(driver, params: list[str], metrics: list[str], timeout: float = 60) -> object:
    """On MLflow's compare page, set the parallel coordinates plot to `params` then `metrics` (the last axis
    colours the lines) in place of the UI's pick (the first three differing params in name order, the first
    metric); returns the panel once its axes are those. Raises RuntimeError naming what did not show."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)

    def find(what: str, condition):
        try:
            return wait.until(condition)
        except TimeoutException:
            raise RuntimeError(f"the MLflow compare page shows no {what} after {timeout:g} s") from None

    def shown(what: str, css: str):
        return find(what, ec.presence_of_element_located((By.CSS_SELECTOR, css)))

    panel = shown("parallel coordinates panel", "[id$='-content-parallel-coordinates-plot']")
    shown("parallel coordinates plot", ".pcp-plot .parcoords")
    shown("Clear All button", "[data-testid='clear-button']").click()
    boxes = panel.find_elements(By.CSS_SELECTOR, "[class*='-select-selector']")
    if len(boxes) != 2:
        raise RuntimeError(f"the parallel coordinates panel has {len(boxes)} selectors, not 2")
    for box, keys in zip(boxes, (params, metrics), strict=True):
        for key in keys:
            box.click()
            driver.switch_to.active_element.send_keys(key)
            option = f"//div[contains(@class, '-select-item-option')][normalize-space() = '{key}']"
            find(f"option {key}", ec.element_to_be_clickable((By.XPATH, option))).click()
        driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    driver.execute_script("document.activeElement.blur()")
    axes = params + metrics
    titles = (By.CSS_SELECTOR, ".pcp-plot .axis-title")
    find(f"axes {', '.join(axes)}", lambda d: [t.text for t in d.find_elements(*titles)] == axes)
    return panel
