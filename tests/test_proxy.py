"""Behind a real nginx, in both proxy modes: prefix stripped (no option needed) and prefix
passed through (`--base-url`). Pages load, navigation works, live updates cross the proxied
websocket; a public Host is refused until allowed; a Host-rewriting proxy needs --allow-origin."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import chromium, free_port, make_config

from cardserver import demo

pytestmark = pytest.mark.timeout(180)
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
UI_WAIT = 20_000
PUBLIC = "workspace.test"  # resolved to 127.0.0.1 by Chromium's host-resolver rule

LOCATION = """
    location {path} {{
        proxy_pass http://127.0.0.1:{port}{target};
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_set_header Host {host};
        proxy_read_timeout 3600s;
    }}
"""

CONFIG = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{listen};
        {locations}
    }}
}}
"""


@dataclass
class Nginx:
    port: int
    process: subprocess.Popen[bytes]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
async def nginx(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[Nginx] = []

    async def start(routes: list[tuple[str, int, str, str]], listen: int | None = None,
                    extra: str = "") -> Nginx:
        """routes: (location path, upstream port, upstream path, Host header to send)."""
        folder = tmp_path / f"nginx{len(started)}"
        folder.mkdir()
        listen = listen or free_port()
        locations = extra + "".join(
            LOCATION.format(path=path, port=port, target=target, host=host)
            for path, port, target, host in routes
        )
        conf = folder / "nginx.conf"
        conf.write_text(CONFIG.format(tmp=folder, listen=listen, locations=locations))
        process = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(folder)],
                                   stderr=subprocess.PIPE)
        proxy = Nginx(listen, process)
        started.append(proxy)
        await wait_listening(listen, process)
        return proxy

    yield start
    for proxy in started:
        proxy.process.terminate()
        proxy.process.wait(timeout=10)


async def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise AssertionError(f"nginx exited: {process.stderr.read() if process.stderr else ''}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.025)  # nginx gives no readiness signal but its port
            continue
        writer.close()
        return
    raise AssertionError("nginx did not listen")


@pytest.fixture
async def public_browser() -> AsyncIterator[Any]:
    async with chromium(PUBLIC) as launched:
        yield launched


def live_card(roots: Any) -> Any:
    run = demo.start_run(roots.datastore, flow="ProxyFlow")
    card = run.start_task("start").add_card(components=[demo.progress("bar", 1, 100, "steps")])
    second = run.start_task("start")
    second.add_card(id="second", components=[demo.text("t", "second card")])
    second.finish()  # follow mode stays on the running card
    return card


async def see_live_update(page: Any, card: Any) -> None:
    """The viewer shows the card, and a new data update reaches it through the proxy."""
    await page.wait_for_selector("#frames iframe:not(.incoming)", timeout=UI_WAIT)
    await page.wait_for_function("() => document.getElementById('connection').dataset.state === 'live'",
                                 timeout=UI_WAIT)
    frame = await (await page.query_selector("#frames iframe:not(.incoming)")).content_frame()
    await frame.wait_for_function("document.querySelector('[data-component-id=bar]')",
                                  timeout=UI_WAIT)
    card.update({"bar": demo.progress("bar", 64, 100, "steps")})
    await frame.wait_for_function(
        "document.querySelector('[data-component-id=bar]').textContent.includes('64')",
        timeout=UI_WAIT)


async def navigate(page: Any, prefix: str) -> None:
    """Pick the second card by hand: the address stays under the proxy's prefix."""
    await page.locator("#card-list .row", has_text="second").click(timeout=UI_WAIT)
    await page.wait_for_function("(p) => location.pathname.startsWith(p + 'run/ProxyFlow/')",
                                 arg=prefix, timeout=UI_WAIT)
    await page.reload()
    await page.wait_for_selector("#card-list .row[aria-selected=true]", timeout=UI_WAIT)
    selected = await page.get_attribute("#card-list .row[aria-selected=true]", "data-id")
    assert selected is not None and "-second-" in selected


async def test_prefix_stripped_needs_no_option(roots: Any, start_app: Any, nginx: Any,
                                               browser: Any) -> None:
    card = live_card(roots)
    client = await start_app(make_config(roots))
    proxy = await nginx([("/user/ana/proxy/8423/", client.server.port, "/", "$http_host")])
    page = await browser.new_page()
    await page.goto(proxy.url("/user/ana/proxy/8423/"))
    await see_live_update(page, card)
    assert page.url.startswith(proxy.url("/user/ana/proxy/8423/run/ProxyFlow/"))
    await navigate(page, "/user/ana/proxy/8423/")


async def test_prefix_passed_with_base_url(roots: Any, start_app: Any, nginx: Any,
                                           browser: Any) -> None:
    card = live_card(roots)
    client = await start_app(make_config(roots, base_url="/proxy/8423/"))
    proxy = await nginx([("/proxy/8423/", client.server.port, "", "$http_host")])
    page = await browser.new_page()
    await page.goto(proxy.url("/proxy/8423/"))
    await see_live_update(page, card)
    await navigate(page, "/proxy/8423/")
    # Without the prefix nothing is served: the app lives under --base-url only.
    missing = await client.get("/")
    assert missing.status == 404


async def test_public_host_refused_until_allowed(roots: Any, start_app: Any, nginx: Any,
                                                 public_browser: Any) -> None:
    card = live_card(roots)
    refused = await start_app(make_config(roots))
    allowed = await start_app(make_config(roots, allow_hosts=frozenset({PUBLIC})))
    proxy = await nginx([("/a/", refused.server.port, "/", "$http_host"),
                         ("/b/", allowed.server.port, "/", "$http_host")])
    page = await public_browser.new_page()
    response = await page.goto(proxy.url("/a/", host=PUBLIC))
    assert response.status == 403
    assert "--allow-host workspace.test" in await response.text()
    await page.goto(proxy.url("/b/", host=PUBLIC))
    await see_live_update(page, card)


async def test_viewer_says_when_the_card_updates_are_cut(roots: Any, start_app: Any, nginx: Any,
                                                        browser: Any) -> None:
    """A proxy that serves the pages but refuses the websocket (as Jupyter does a request
    without its cookie): the viewer does not claim "live"; it says the updates are paused
    and why, for the card it shows."""
    live_card(roots)
    client = await start_app(make_config(roots))
    port = client.server.port
    blocked = "\n    location = /cut/ws { return 403; }\n"
    proxy = await nginx([("/cut/", port, "/", "$http_host")], extra=blocked)
    page = await browser.new_page()
    await page.goto(proxy.url("/cut/"))
    await page.wait_for_function(
        "() => document.getElementById('card-live').textContent.includes('HTTP 403')",
        timeout=UI_WAIT)
    text = await page.text_content("#card-live")
    assert text == "updates paused: the proxy refused the connection (HTTP 403)", text
    assert await page.text_content("#connection") != "live"
    assert "HTTP 403" in (await page.get_attribute("#connection", "title") or "")


async def test_host_rewriting_proxy_needs_allow_origin(roots: Any, start_app: Any, nginx: Any,
                                                       public_browser: Any) -> None:
    """jupyter-server-proxy, Caddy and others send the upstream's own Host: the page's Origin
    then differs from Host, so the websocket is refused until the origin is allowed."""
    card = live_card(roots)
    strict = await start_app(make_config(roots))
    proxy = await nginx([("/s/", strict.server.port, "/", f"127.0.0.1:{strict.server.port}")])
    page = await public_browser.new_page()
    await page.goto(proxy.url("/s/", host=PUBLIC))
    # The page says why and what to do, naming its own origin.
    await page.wait_for_function(
        "() => document.getElementById('empty').textContent.includes('--allow-origin')",
        timeout=UI_WAIT)
    assert f"--allow-origin http://{PUBLIC}:{proxy.port}" in await page.text_content("#empty")
    assert await page.locator("#card-list .row").count() == 0  # nothing leaks without the socket

    listen = free_port()
    origin = f"http://{PUBLIC}:{listen}"
    allowed = await start_app(make_config(roots, allow_origins=frozenset({origin})))
    upstream = f"127.0.0.1:{allowed.server.port}"
    proxy = await nginx([("/o/", allowed.server.port, "/", upstream)], listen=listen)
    page = await public_browser.new_page()
    await page.goto(proxy.url("/o/", host=PUBLIC))
    await see_live_update(page, card)
