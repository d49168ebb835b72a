"""Headless system Chromium for tests, driven over the raw DevTools Protocol (CDP).

Launch: a fresh temporary profile, ``--remote-debugging-port=0`` and the port read
back from ``<user-data-dir>/DevToolsActivePort``, then one WebSocket to the browser
target.  Pages are attached in flatten mode, so every page shares that socket; one
reader task routes replies by ``id`` and events by ``sessionId``.

Close: ``Browser.close``, wait for the process to exit (at most 5 s), SIGKILL
whatever is left in the browser's own process group, remove the profile.  Nothing
is ever killed by name, and no asyncio task outlives :meth:`Browser.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import shutil
import signal
import subprocess
import tempfile
import wave
import weakref
from collections.abc import Callable, Coroutine, Generator, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import aiohttp
import msgspec

LAUNCH_TIMEOUT_S: Final = 20.0
"""How long Chromium may take to write ``DevToolsActivePort``."""
EXIT_TIMEOUT_S: Final = 5.0
"""How long Chromium may take to exit after ``Browser.close`` before SIGKILL."""
COMMAND_TIMEOUT_S: Final = 30.0
"""Default wait for one CDP reply (and for a page's load event)."""
LOG_TAIL_CHARS: Final = 4000

BASE_FLAGS: Final[tuple[str, ...]] = (
    "--headless",
    "--no-sandbox",  # required when running as root (containers, CI)
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-proxy-server",  # never route loopback traffic through an environment proxy
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--password-store=basic",
    "--mute-audio",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
)
"""Hermetic, container-safe flags: no network beyond what a page asks for, no UI."""

WEBRTC_FLAGS: Final[tuple[str, ...]] = (
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
)
"""Fake microphone with permission granted, loopback ICE candidates, no mDNS names."""

_FEATURE_SWITCHES: Final = ("--disable-features=", "--enable-features=")


class ChromiumError(RuntimeError):
    """Base of every error this driver raises (besides ``TimeoutError``)."""


class LaunchError(ChromiumError):
    """Chromium is missing, exited early, or DevTools never became ready; carries the log tail."""


class ConnectionClosedError(ChromiumError):
    """The DevTools WebSocket closed (or the target went away) before the reply came."""


class CdpError(ChromiumError):
    """A CDP command was answered with an error; ``message`` is Chromium's own text."""

    def __init__(self, method: str, code: int | None, message: str, data: str | None) -> None:
        detail = f" ({data})" if data else ""
        super().__init__(f"{method} failed: {message}{detail} [code {code}]")
        self.method = method
        self.code = code
        self.message = message
        self.data = data


class PageError(ChromiumError):
    """JavaScript threw while evaluating; ``text`` is CDP's summary, ``description`` the error."""

    def __init__(self, details: dict[str, Any]) -> None:
        self.text: str = details.get("text", "exception")
        self.description: str = _exception_description(details)
        super().__init__(_exception_message(self.text, self.description))


class NavigationError(ChromiumError):
    """``Page.navigate`` reported a network error (``errorText``, e.g. ``net::ERR_...``)."""


def find_chromium() -> str | None:
    """The Chromium to run: ``$CHROMIUM_BIN`` if set, else the first of ``chromium``,
    ``chromium-browser``, ``google-chrome`` on PATH, else ``None``.

    An explicit ``$CHROMIUM_BIN`` is returned even when it does not exist, so a wrong
    setting fails at launch instead of silently skipping browser tests.
    """
    explicit = os.environ.get("CHROMIUM_BIN")
    if explicit:
        return shutil.which(explicit) or explicit
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def chromium_flags(
    user_data_dir: Path,
    fake_audio_wav: Path | None = None,
    loop_audio: bool = False,
    extra: Iterable[str] = (),
) -> list[str]:
    """Command-line flags for a hermetic headless Chromium with a fake microphone.

    ``fake_audio_wav`` (16-bit PCM WAV, any rate) is what the fake microphone plays,
    once unless ``loop_audio``; without it the fake device plays Chromium's beep.
    DevTools listens on 127.0.0.1 on a free port (``--remote-debugging-port=0``).
    Every ``--disable-features=``/``--enable-features=`` value, ours and ``extra``'s,
    is merged into one switch each, because Chromium keeps only the last one.
    """
    flags = [
        *BASE_FLAGS,
        *WEBRTC_FLAGS,
        "--remote-debugging-port=0",
        "--remote-debugging-address=127.0.0.1",
        f"--user-data-dir={Path(user_data_dir).absolute()}",
    ]
    if fake_audio_wav is not None:
        suffix = "" if loop_audio else "%noloop"
        flags.append(f"--use-file-for-fake-audio-capture={Path(fake_audio_wav).absolute()}{suffix}")
    flags.extend(extra)
    return _merge_feature_switches(flags)


def _merge_feature_switches(flags: list[str]) -> list[str]:
    merged: dict[str, list[str]] = {prefix: [] for prefix in _FEATURE_SWITCHES}
    out: list[str] = []
    for flag in flags:
        prefix = next((p for p in _FEATURE_SWITCHES if flag.startswith(p)), None)
        if prefix is None:
            out.append(flag)
            continue
        for name in flag[len(prefix) :].split(","):
            if name and name not in merged[prefix]:
                merged[prefix].append(name)
    out.extend(prefix + ",".join(names) for prefix, names in merged.items() if names)
    return out


EventHandler = Callable[[str, dict[str, Any]], None]


class _Connection:
    """One DevTools WebSocket: commands matched to replies by id, events routed by session."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._http = http
        self._ws = ws
        self._ids = itertools.count(1)
        # id -> (method, sessionId, reply future)
        self._pending: dict[int, tuple[str, str | None, asyncio.Future[dict[str, Any]]]] = {}
        self._handlers: dict[str | None, EventHandler] = {}
        self._closed_reason: str | None = None
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")

    @classmethod
    async def open(cls, url: str) -> _Connection:
        http = aiohttp.ClientSession()
        try:
            ws = await http.ws_connect(url, max_msg_size=0, autoping=True)
        except BaseException:
            await http.close()
            raise
        return cls(http, ws)

    @property
    def alive(self) -> bool:
        return self._closed_reason is None

    def on_events(self, session_id: str | None, handler: EventHandler | None) -> None:
        """Route events of ``session_id`` (``None``: the browser target) to ``handler``."""
        if handler is None:
            self._handlers.pop(session_id, None)
        else:
            self._handlers[session_id] = handler

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session_id: str | None = None,
        timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Send one command and return its ``result``; :class:`CdpError` if it failed."""
        if self._closed_reason is not None:
            raise ConnectionClosedError(f"{method}: {self._closed_reason}")
        msg_id = next(self._ids)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = (method, session_id, reply)
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        try:
            try:
                await self._ws.send_str(msgspec.json.encode(message).decode())
            except (ConnectionError, aiohttp.ClientError) as exc:
                raise ConnectionClosedError(f"{method}: DevTools connection lost: {exc}") from exc
            async with asyncio.timeout(timeout_s):
                return await reply
        except TimeoutError:
            raise TimeoutError(f"{method}: no reply within {timeout_s} s") from None
        finally:
            self._pending.pop(msg_id, None)

    def fail_session(self, session_id: str, reason: str) -> None:
        """Fail every command still waiting on ``session_id`` (its target crashed or left)."""
        for method, session, reply in list(self._pending.values()):
            if session == session_id and not reply.done():
                reply.set_exception(ConnectionClosedError(f"{method}: {reason}"))

    async def close(self) -> None:
        """Close the socket and end the reader task; pending commands fail."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                await self._ws.close()
        if not self._reader.done():
            self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self._http.close()

    async def _read(self) -> None:
        reason = "DevTools connection closed"
        try:
            async for msg in self._ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self._dispatch(msgspec.json.decode(msg.data))
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    reason = f"DevTools connection failed: {self._ws.exception()!r}"
                    break
        except Exception as exc:
            reason = f"DevTools reader failed: {exc!r}"
            raise
        finally:
            self._closed_reason = reason
            for method, _, reply in self._pending.values():
                if not reply.done():
                    reply.set_exception(ConnectionClosedError(f"{method}: {reason}"))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "id" in message:
            entry = self._pending.get(message["id"])
            if entry is None or entry[2].done():
                return  # its caller timed out or was cancelled
            method, _, reply = entry
            error = message.get("error")
            if error is not None:
                reply.set_exception(
                    CdpError(method, error.get("code"), error.get("message", ""), error.get("data"))
                )
            else:
                reply.set_result(message.get("result", {}))
            return
        handler = self._handlers.get(message.get("sessionId"))
        if handler is not None and "method" in message:
            handler(message["method"], message.get("params", {}))


class Page:
    """One tab attached over the browser's socket.

    ``console`` collects, in arrival order, ``"<type>: <args>"`` for each console call
    (``"log: hello 42"``, ``"error: ..."``), ``"exception: <text>: <description>"`` for
    each uncaught exception, and ``"<source>.<level>: <text>"`` for browser log entries
    (network failures and the like).
    """

    def __init__(self, connection: _Connection, target_id: str, session_id: str) -> None:
        self.target_id = target_id
        self.session_id = session_id
        self.console: list[str] = []
        self._connection = connection
        self._loaded: set[str] = set()  # loaderIds whose load event fired
        self._load_waiters: dict[str, asyncio.Future[None]] = {}
        self._closed = False
        self._gone: str | None = None
        connection.on_events(session_id, self._on_event)

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Send a raw CDP command to this page's session and return its ``result``."""
        if self._gone is not None:
            raise ConnectionClosedError(f"{method}: {self._gone}")
        return await self._connection.send(method, params, self.session_id, timeout_s)

    async def goto(self, url: str, timeout_s: float = COMMAND_TIMEOUT_S) -> None:
        """Navigate to ``url`` and return once that navigation's load event fired
        (at once for a same-document navigation); :class:`NavigationError` on failure."""
        reply = await self.send("Page.navigate", {"url": url}, timeout_s)
        if reply.get("errorText"):
            raise NavigationError(f"navigation to {url} failed: {reply['errorText']}")
        loader_id = reply.get("loaderId")
        if loader_id is None or loader_id in self._loaded:
            return
        if self._gone is not None:
            raise ConnectionClosedError(f"{url}: {self._gone}")
        loaded = self._load_waiters.setdefault(
            loader_id, asyncio.get_running_loop().create_future()
        )
        try:
            async with asyncio.timeout(timeout_s):
                await loaded
        except TimeoutError:
            raise TimeoutError(f"{url}: no load event within {timeout_s} s") from None
        finally:
            self._load_waiters.pop(loader_id, None)

    async def evaluate(
        self, expression: str, await_promise: bool = False, timeout_s: float = COMMAND_TIMEOUT_S
    ) -> Any:
        """The JSON value of ``expression`` (``None`` for undefined; NaN/±Infinity as floats).

        With ``await_promise`` a returned promise is awaited.  A JavaScript exception
        (or rejection) raises :class:`PageError`; no reply within ``timeout_s`` raises
        ``TimeoutError``.
        """
        reply = await self.send(
            "Runtime.evaluate",
            {
                "expression": expression,
                "returnByValue": True,
                "awaitPromise": await_promise,
                "userGesture": True,
            },
            timeout_s,
        )
        details = reply.get("exceptionDetails")
        if details is not None:
            raise PageError(details)
        return _remote_value(reply.get("result", {}))

    async def wait_for(self, expression: str, timeout_s: float, poll_s: float = 0.05) -> Any:
        """Evaluate ``expression`` every ``poll_s`` until it is truthy (JavaScript's sense)
        and return its value; ``TimeoutError`` naming the last value after ``timeout_s``.

        ``expression`` must be a single JavaScript expression; exceptions propagate.
        """
        probe = f"(function (v) {{ return [!!v, v]; }})(({expression}\n))"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            remaining = max(deadline - loop.time(), 0.0)
            truthy, value = await self.evaluate(probe, timeout_s=max(remaining, 1.0))
            if truthy:
                return value
            if loop.time() >= deadline:
                raise TimeoutError(
                    f"{expression!r} still falsy after {timeout_s} s; last value {value!r}"
                )
            await asyncio.sleep(poll_s)

    async def close(self) -> None:
        """Close the tab (``Target.closeTarget``); a no-op once the browser is gone."""
        if self._closed:
            return
        self._closed = True
        try:
            with contextlib.suppress(ConnectionClosedError):
                await self._connection.send("Target.closeTarget", {"targetId": self.target_id})
        finally:
            self._detach("page closed")

    def _detach(self, reason: str) -> None:
        self._gone = self._gone or reason
        self._connection.on_events(self.session_id, None)
        self._connection.fail_session(self.session_id, reason)
        for waiter in self._load_waiters.values():
            if not waiter.done():
                waiter.set_exception(ConnectionClosedError(reason))

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled":
            args = " ".join(_describe(arg) for arg in params.get("args", []))
            self.console.append(f"{params.get('type', 'log')}: {args}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.console.append(f"exception: {PageError(details)}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            source, level = entry.get("source", "other"), entry.get("level", "info")
            self.console.append(f"{source}.{level}: {entry.get('text', '')}")
        elif method == "Page.lifecycleEvent" and params.get("name") == "load":
            loader_id = params.get("loaderId", "")
            self._loaded.add(loader_id)
            waiter = self._load_waiters.get(loader_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif method == "Inspector.targetCrashed":
            self.console.append("crash: the page's renderer crashed")
            self._detach("the page's renderer crashed")


class Browser:
    """A running headless Chromium with its own temporary profile and process group.

    Get one with ``await Browser.launch(...)`` or ``async with Browser.launch(...) as b``;
    always :meth:`close` it (the context manager does).
    """

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        profile_dir: Path,
        log_path: Path,
        connection: _Connection,
    ) -> None:
        self.profile_dir = profile_dir
        self.log_path = log_path
        self._proc = proc
        self._connection = connection
        self._closed = False
        self._final_log: str | None = None
        self._pages: dict[str, Page] = {}
        self._finalizer = weakref.finalize(self, _abandoned, proc, profile_dir)
        connection.on_events(None, self._on_browser_event)

    @property
    def pid(self) -> int:
        """Process id of the browser process, also the id of its process group."""
        return self._proc.pid

    @staticmethod
    def launch(
        fake_audio_wav: Path | None = None,
        loop_audio: bool = False,
        extra_flags: Iterable[str] = (),
        log_path: Path | None = None,
        *,
        chromium: str | None = None,
        timeout_s: float = LAUNCH_TIMEOUT_S,
    ) -> _Launch:
        """Start Chromium (``chromium`` or :func:`find_chromium`) and connect to DevTools.

        ``fake_audio_wav`` feeds the fake microphone (see :func:`chromium_flags`).
        Chromium's stdout and stderr go to ``log_path``, by default a file in the
        profile (kept in memory after close, see :meth:`log_text`).  Raises
        :class:`LaunchError` with the log tail if DevTools is not ready in ``timeout_s``.
        """
        return _Launch(
            lambda: Browser._start(
                fake_audio_wav=fake_audio_wav,
                loop_audio=loop_audio,
                extra_flags=tuple(extra_flags),
                log_path=log_path,
                chromium=chromium,
                timeout_s=timeout_s,
            )
        )

    @classmethod
    async def _start(
        cls,
        *,
        fake_audio_wav: Path | None,
        loop_audio: bool,
        extra_flags: tuple[str, ...],
        log_path: Path | None,
        chromium: str | None,
        timeout_s: float,
    ) -> Browser:
        binary = chromium or find_chromium()
        if binary is None:
            raise LaunchError("no Chromium found: apt-get install chromium, or set CHROMIUM_BIN")
        if fake_audio_wav is not None:
            _check_fake_audio(Path(fake_audio_wav))
        profile = Path(tempfile.mkdtemp(prefix="voxgate-chromium-"))
        user_data, home = profile / "user-data", profile / "home"
        user_data.mkdir()
        home.mkdir()
        log = Path(log_path).absolute() if log_path is not None else profile / "chromium.log"
        env = {
            **os.environ,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
        }
        argv = [binary, *chromium_flags(user_data, fake_audio_wav, loop_audio, extra_flags)]
        try:
            with log.open("ab") as log_file:
                proc = subprocess.Popen(
                    [*argv, "about:blank"],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=profile,
                    start_new_session=True,
                )
        except OSError as exc:
            shutil.rmtree(profile, ignore_errors=True)
            raise LaunchError(f"cannot start {binary}: {exc}") from exc
        try:
            url = await _devtools_url(proc, user_data / "DevToolsActivePort", log, timeout_s)
            connection = await _Connection.open(url)
        except BaseException:
            await _stop_process(proc, 0.0)
            shutil.rmtree(profile, ignore_errors=True)
            raise
        return cls(proc, profile, log, connection)

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Send a raw CDP command to the browser target and return its ``result``."""
        return await self._connection.send(method, params, None, timeout_s)

    async def version(self) -> dict[str, Any]:
        """``Browser.getVersion``: ``product``, ``userAgent``, ``protocolVersion``, ..."""
        return await self.send("Browser.getVersion")

    async def new_page(
        self, url: str = "about:blank", timeout_s: float = COMMAND_TIMEOUT_S
    ) -> Page:
        """Open a tab, enable its Runtime, Page, Log and Inspector domains, navigate to
        ``url`` and return once the load event fired."""
        created = await self.send("Target.createTarget", {"url": "about:blank"}, timeout_s)
        target_id: str = created["targetId"]
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target_id, "flatten": True}, timeout_s
        )
        page = Page(self._connection, target_id, attached["sessionId"])
        self._pages[page.session_id] = page
        try:
            for domain in ("Runtime", "Page", "Log", "Inspector"):
                await page.send(f"{domain}.enable", timeout_s=timeout_s)
            await page.send("Page.setLifecycleEventsEnabled", {"enabled": True}, timeout_s)
            if url != "about:blank":
                await page.goto(url, timeout_s)
        except BaseException:
            with contextlib.suppress(ChromiumError, TimeoutError):
                await page.close()
            raise
        return page

    def log_text(self) -> str:
        """Everything Chromium wrote to stdout and stderr so far (also after close)."""
        if self._final_log is not None:
            return self._final_log
        return _read_text(self.log_path)

    async def close(self) -> None:
        """Close politely (``Browser.close``), wait up to 5 s for the process to exit,
        SIGKILL anything left in its process group, remove the profile.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._connection.alive:
                with contextlib.suppress(ChromiumError, TimeoutError):
                    await self.send("Browser.close", timeout_s=EXIT_TIMEOUT_S)
        finally:
            await self._connection.close()
            await _stop_process(self._proc, EXIT_TIMEOUT_S)
            await _wait_for_helpers(self.profile_dir, EXIT_TIMEOUT_S)
            self._final_log = _read_text(self.log_path)
            self._finalizer.detach()
            shutil.rmtree(self.profile_dir, ignore_errors=True)

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _on_browser_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Target.detachedFromTarget":
            page = self._pages.pop(params.get("sessionId", ""), None)
            if page is not None:
                page._detach("the page's target went away")


class _Launch:
    """What :meth:`Browser.launch` returns: await it, or use it as ``async with``."""

    def __init__(self, start: Callable[[], Coroutine[Any, Any, Browser]]) -> None:
        self._start = start
        self._browser: Browser | None = None

    def __await__(self) -> Generator[Any, None, Browser]:
        browser: Browser = yield from self._start().__await__()
        return browser

    async def __aenter__(self) -> Browser:
        self._browser = await self
        return self._browser

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._browser is not None:
            await self._browser.close()


async def _devtools_url(
    proc: subprocess.Popen[bytes], port_file: Path, log: Path, timeout_s: float
) -> str:
    """The browser target's WebSocket URL, from ``DevToolsActivePort`` (port, then path)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        with contextlib.suppress(OSError):
            lines = port_file.read_text().splitlines()
            if len(lines) >= 2 and lines[0].strip().isdigit() and lines[1].startswith("/"):
                return f"ws://127.0.0.1:{lines[0].strip()}{lines[1].strip()}"
        if _exited(proc):
            raise LaunchError(
                f"chromium exited before DevTools was ready; log tail:\n{_tail(_read_text(log))}"
            )
        if loop.time() >= deadline:
            raise LaunchError(
                f"DevTools not ready within {timeout_s} s; log tail:\n{_tail(_read_text(log))}"
            )
        await asyncio.sleep(0.05)


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the process has exited, without reaping it (its pid and group id stay ours)."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


async def _stop_process(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """Wait up to ``grace_s`` for ``proc`` to exit, SIGKILL its process group, reap it.

    The leader is reaped only after the group kill, so the group id cannot have been
    reused by an unrelated process.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    try:
        while not _exited(proc) and loop.time() < deadline:
            await asyncio.sleep(0.05)
    finally:  # also when cancelled: never leave the group running
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc``'s own process group (it leads it), then reap ``proc``."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=EXIT_TIMEOUT_S)  # SIGKILL cannot be ignored: this is immediate


def _abandoned(proc: subprocess.Popen[bytes], profile_dir: Path) -> None:
    """Safety net for a :class:`Browser` never closed: kill its group, drop its profile."""
    _kill_group(proc)
    shutil.rmtree(profile_dir, ignore_errors=True)


def profile_processes(profile_dir: Path) -> list[int]:
    """Live (non-zombie) processes whose command line names ``profile_dir``: Chromium's
    own, including helpers outside its process group (crashpad).  Linux ``/proc`` only."""
    needle = str(profile_dir).encode()
    found: list[int] = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


async def _wait_for_helpers(profile_dir: Path, grace_s: float) -> None:
    """Give helpers outside the process group (crashpad) ``grace_s`` to exit by themselves;
    they are never signalled."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while profile_processes(profile_dir) and loop.time() < deadline:
        await asyncio.sleep(0.05)


def _check_fake_audio(path: Path) -> None:
    """Refuse files the fake microphone would silently replace with digital silence."""
    if not path.is_file():
        raise FileNotFoundError(f"fake microphone file {path} does not exist")
    with contextlib.suppress(wave.Error, EOFError), wave.open(str(path), "rb") as w:
        if w.getsampwidth() == 3:
            raise ValueError(f"{path} is 24-bit PCM, which Chromium's fake mic plays as silence")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _tail(text: str) -> str:
    return text[-LOG_TAIL_CHARS:]


def _remote_value(remote: dict[str, Any]) -> Any:
    """A Runtime.RemoteObject (returned by value) as a Python value."""
    if "value" in remote:
        return remote["value"]
    special = remote.get("unserializableValue")
    if special is None:
        return None  # undefined
    if special.endswith("n"):  # BigInt
        return int(special[:-1])
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf, "-0": -0.0}.get(
        special, special
    )


def _describe(arg: dict[str, Any]) -> str:
    """A console argument as text: primitives by value, objects by their description."""
    if "value" in arg:
        value = arg["value"]
        return value if isinstance(value, str) else msgspec.json.encode(value).decode()
    if "unserializableValue" in arg:
        return str(arg["unserializableValue"])
    return str(arg.get("description", arg.get("type", "")))


def _exception_message(text: str, description: str) -> str:
    """``text`` and ``description`` without repeating the error line both may hold."""
    if not description:
        return text
    first = description.splitlines()[0]
    if first and first in text:
        return text + description[len(first) :]
    return f"{text}: {description}"


def _exception_description(details: dict[str, Any]) -> str:
    exception = details.get("exception") or {}
    if "description" in exception:
        return str(exception["description"])
    if "value" in exception:
        return str(exception["value"])
    return ""
