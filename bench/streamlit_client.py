"""A browser's requests to the Streamlit server without the browser's rendering: what a page
load costs the server, measured apart from what it costs the client.

On one small machine ten headless chromium pages spend far more CPU parsing and drawing than
the server spends answering them, so a browser-only benchmark measures the browser. This
client replays, over the network, the requests one real page load made (recorded once with
Playwright): the document and static files on six keep-alive connections (as chromium opens
per host), then the session's websocket with a script run, until the first plotly chart's
delta has arrived and the files fetched after it (plotly's chunk) are downloaded. That is the
moment a browser has everything it needs to draw the first heatmap.
"""

from __future__ import annotations

import asyncio
import http.client
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

CONNECTIONS_PER_HOST = 6  # chromium's HTTP/1.1 limit
STREAM_PATH = "/_stcore/stream"


@dataclass(frozen=True)
class PageRequests:
    """Same-origin paths one page load fetched: before its websocket opened, and after."""

    before_session: tuple[str, ...]
    after_session: tuple[str, ...]


async def record_requests(browser, url: str, drawn: str) -> PageRequests:
    """Load the page once in a real browser (Playwright, async) and list its requests."""
    page = await browser.new_page(viewport={"width": 1500, "height": 1000})
    opened: list[float] = []
    started: list[tuple[float, str]] = []
    page.on("websocket", lambda _: opened.append(time.monotonic()))
    page.on("request", lambda request: started.append((time.monotonic(), request.url)))
    try:
        await page.goto(url, timeout=300_000)
        await page.wait_for_function(drawn, timeout=300_000, polling="raf")
    finally:
        await page.close()
    if not opened:
        raise RuntimeError(f"{url}: the page opened no websocket")
    origin = url.rstrip("/")
    paths = [(t, u[len(origin) :] or "/") for t, u in started if u.startswith(origin)]
    before = tuple(p for t, p in paths if t < opened[0] and p != "/")
    after = tuple(p for t, p in paths if t >= opened[0])
    return PageRequests(before, after)


def _fetch_all(host: str, port: int, paths: list[str]) -> None:
    """GET every path over CONNECTIONS_PER_HOST keep-alive connections."""
    todo: queue.SimpleQueue[str] = queue.SimpleQueue()
    for path in paths:
        todo.put(path)

    def worker(_: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=300)
        try:
            while True:
                try:
                    path = todo.get_nowait()
                except queue.Empty:
                    return
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"GET {path}: HTTP {response.status}")
        finally:
            connection.close()

    with ThreadPoolExecutor(CONNECTIONS_PER_HOST) as pool:
        list(pool.map(worker, range(CONNECTIONS_PER_HOST)))


def _first_chart(message: ForwardMsg) -> bool:
    return (
        message.WhichOneof("type") == "delta"
        and message.delta.WhichOneof("type") == "new_element"
        and message.delta.new_element.WhichOneof("type") == "plotly_chart"
    )


async def _receive(stream) -> ForwardMsg:
    message = ForwardMsg()
    message.ParseFromString(await stream.recv())
    return message


async def page_load(url: str, requests: PageRequests) -> float:
    """Seconds from the document request until the first chart and the files fetched after
    it have arrived. The session then stays until its script run ends, as a tab would."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    started = time.monotonic()
    await asyncio.to_thread(_fetch_all, host, port, ["/", *requests.before_session])
    async with websockets.connect(
        f"ws://{host}:{port}{STREAM_PATH}", subprotocols=["streamlit"], max_size=None
    ) as stream:
        rerun = BackMsg()
        rerun.rerun_script.query_string = ""
        rerun.rerun_script.page_script_hash = ""
        await stream.send(rerun.SerializeToString())
        while not _first_chart(await _receive(stream)):
            pass
        await asyncio.to_thread(_fetch_all, host, port, list(requests.after_session))
        ready = time.monotonic() - started
        while (await _receive(stream)).WhichOneof("type") != "script_finished":
            pass
    return ready


def use_threads_for(sessions: int) -> None:
    """Give the running loop's default executor a thread per concurrent session's fetches
    (asyncio's default, cores + 4, would queue the sessions behind one another)."""
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(4 * sessions))
