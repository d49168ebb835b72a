"""Offline TTS: espeak-ng, through its C library or else its command-line binary.

The library (``libespeak-ng`` from the espeakng-loader wheel, or
``library_path``) is driven through ctypes in synchronous mode: ``espeak_Synth``
blocks while it calls our callback with 22050 Hz samples and events; WORD
events give each word's start (its sample offset) and its place in the text.
The library keeps global state and is not thread-safe, so every call to it
runs on one worker thread per process (:func:`engine`), under a lock.

When the library cannot load, the ``espeak-ng`` binary writes a WAV to its
stdout instead (``espeak-ng --stdout``); that path has no word alignment.

A stream buffers pushed text into phrases (cut after ``. ! ? ; :`` or a line
break followed by a space, or at ``max_phrase_chars``), speaks the phrases in
order with ``phrase_pause_ms`` of silence between them, resamples to
``rate_hz`` with a streaming soxr resampler and delivers ``chunk_ms`` chunks
as synthesis produces them.  Word times are ms since the
generation's first sample.  :meth:`EspeakTtsStream.cancel` aborts the running
synthesis (the callback returns 1) and ends :meth:`EspeakTtsStream.chunks` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, Literal, Protocol

import msgspec
import numpy as np
import numpy.typing as npt
import soxr

from server.providers.base import ProviderError, TtsChunk, Word

PROVIDER: Final = "espeak"
OUTPUT_RATES_HZ: Final = (8000, 16000, 24000)

Pcm = npt.NDArray[np.int16]


class EspeakTtsSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[providers.espeak]``: voice and pace, and where espeak-ng lives."""

    voice: str = "en-us"
    """espeak-ng voice name (``espeak-ng --voices`` lists them)."""
    words_per_minute: int = 160
    """Speaking rate, 80..450."""
    pitch: int = 50
    """Base pitch, 0..100."""
    chunk_ms: int = 100
    """Audio per delivered chunk (the last one of a generation may be shorter)."""
    phrase_pause_ms: int = 300
    """Silence between two phrases of a generation (none after the last)."""
    max_phrase_chars: int = 300
    """Buffered text is spoken at the last space before this length even without punctuation."""
    backend: Literal["auto", "library", "binary"] = "auto"
    """``auto``: the library, or the binary when the library cannot load."""
    library_path: str | None = None
    """libespeak-ng to load; ``None`` = the one in the espeakng-loader wheel."""
    data_path: str | None = None
    """Directory holding ``espeak-ng-data``; ``None`` = next to the wheel's library."""
    binary: str = "espeak-ng"
    """Executable for the fallback."""


def _check_settings(s: EspeakTtsSettings) -> None:
    if not 80 <= s.words_per_minute <= 450:
        raise ValueError("words_per_minute must be 80..450")
    if not 0 <= s.pitch <= 100:
        raise ValueError("pitch must be 0..100")
    if not 10 <= s.chunk_ms <= 1000:
        raise ValueError("chunk_ms must be 10..1000")
    if not 0 <= s.phrase_pause_ms <= 2000:
        raise ValueError("phrase_pause_ms must be 0..2000")
    if s.max_phrase_chars < 20:
        raise ValueError("max_phrase_chars must be >= 20")
    if not s.voice or not all(c.isalnum() or c in "-_+/" for c in s.voice):
        raise ValueError(f"bad voice name {s.voice!r}")


def _failure(message: str, *, retryable: bool = False) -> ProviderError:
    error = ProviderError(PROVIDER, message)
    error.retryable = retryable
    return error


# ----------------------------------------------------------------- synthesis sink


class Sink(Protocol):
    """Receives one phrase's native audio and word starts, on the engine thread."""

    cancelled: threading.Event

    def audio(self, pcm: Pcm, rate_hz: int) -> None:
        """Native samples (mono int16) at ``rate_hz``, in order."""
        ...

    def word_start(self, text: str, sample: int) -> None:
        """A word begins ``sample`` native samples after the phrase start."""
        ...

    def word_end(self, sample: int) -> None:
        """The open word (if any) ends ``sample`` native samples after the phrase start."""
        ...


class Backend(Protocol):
    name: str

    def speak(self, text: str, settings: EspeakTtsSettings, sink: Sink) -> None:
        """Synthesise ``text`` into ``sink``; returns early when ``sink.cancelled`` is set."""
        ...


# ------------------------------------------------------------------ the C library

_AUDIO_OUTPUT_SYNCHRONOUS: Final = 2
_INITIALIZE_DONT_EXIT: Final = 0x8000
_POS_CHARACTER: Final = 1
_CHARS_UTF8: Final = 1
_PARAM_RATE: Final = 1
_PARAM_PITCH: Final = 3
_EVENT_LIST_TERMINATED: Final = 0
_EVENT_WORD: Final = 1
_EVENT_END: Final = 5
_EVENT_MSG_TERMINATED: Final = 6
_CALLBACK_BUFFER_MS: Final = 50


class _EspeakEvent(ctypes.Structure):
    """``espeak_EVENT`` of speak_lib.h."""

    _fields_ = (
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based, in characters
        ("length", ctypes.c_int),  # characters
        ("audio_position", ctypes.c_int),  # ms
        ("sample", ctypes.c_int),  # samples since the start of this synth call
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    )


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_EspeakEvent)
)


def _wheel_paths() -> tuple[str, str]:
    """(library, data dir) of the espeakng-loader wheel."""
    import espeakng_loader  # type: ignore[import-untyped]

    return str(espeakng_loader.get_library_path()), str(espeakng_loader.get_data_path())


class LibraryBackend:
    """libespeak-ng in synchronous mode; use only from the engine thread."""

    name = "library"

    def __init__(self, library_path: str | None, data_path: str | None) -> None:
        if library_path is None or data_path is None:
            wheel_library, wheel_data = _wheel_paths()
            library_path = library_path or wheel_library
            data_path = data_path or wheel_data
        lib = ctypes.CDLL(library_path)
        lib.espeak_Initialize.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = (_SynthCallback,)
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = (ctypes.c_char_p,)
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = (
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        )
        lib.espeak_Synth.restype = ctypes.c_int
        # The path argument is the directory that contains espeak-ng-data.
        parent = os.path.dirname(os.path.normpath(data_path))
        rate_hz = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _CALLBACK_BUFFER_MS, parent.encode(), _INITIALIZE_DONT_EXIT
        )
        if rate_hz <= 0:
            raise OSError(f"espeak_Initialize failed with data at {data_path}")
        self.rate_hz = int(rate_hz)
        self._lib = lib
        self._callback = _SynthCallback(self._on_synth)  # kept alive with self
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: tuple[str, int, int] | None = None
        self._text = ""
        self._sink: Sink | None = None
        self._error: BaseException | None = None

    def speak(self, text: str, settings: EspeakTtsSettings, sink: Sink) -> None:
        voice = (settings.voice, settings.words_per_minute, settings.pitch)
        if voice != self._voice:
            if self._lib.espeak_SetVoiceByName(settings.voice.encode()) != 0:
                raise _failure(f"unknown voice {settings.voice!r}")
            self._lib.espeak_SetParameter(_PARAM_RATE, settings.words_per_minute, 0)
            self._lib.espeak_SetParameter(_PARAM_PITCH, settings.pitch, 0)
            self._voice = voice
        data = text.encode() + b"\0"
        self._text, self._sink, self._error = text, sink, None
        try:
            status = self._lib.espeak_Synth(
                data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
        finally:
            self._sink = None
        if self._error is not None:
            raise self._error
        if status != 0 and not sink.cancelled.is_set():
            raise _failure(f"espeak_Synth failed with status {status}")

    def _on_synth(
        self,
        wav: ctypes._Pointer[ctypes.c_short],
        n_samples: int,
        events: ctypes._Pointer[_EspeakEvent],
    ) -> int:
        sink = self._sink
        if sink is None or sink.cancelled.is_set() or self._error is not None:
            return 1
        try:
            i = 0
            while events[i].type != _EVENT_LIST_TERMINATED:
                event = events[i]
                if event.type == _EVENT_WORD:
                    start = event.text_position - 1
                    word = self._text[start : start + event.length] if start >= 0 else ""
                    sink.word_start(word, int(event.sample))
                elif event.type in (_EVENT_END, _EVENT_MSG_TERMINATED):
                    sink.word_end(int(event.sample))
                i += 1
            if n_samples > 0 and wav:
                samples = np.ctypeslib.as_array(wav, shape=(n_samples,)).astype(np.int16)
                sink.audio(samples, self.rate_hz)
        except BaseException as exc:  # never let an exception cross the C frame
            self._error = exc
            return 1
        return 1 if sink.cancelled.is_set() else 0


# ------------------------------------------------------------------ the binary


class BinaryBackend:
    """``espeak-ng --stdout``: a WAV stream on stdout, no word events."""

    name = "binary"
    _READ_BYTES: Final = 4096

    def __init__(self, executable: str) -> None:
        path = shutil.which(executable)
        if path is None:
            raise OSError(f"{executable} not found on PATH")
        self._path = path

    def speak(self, text: str, settings: EspeakTtsSettings, sink: Sink) -> None:
        args = [
            self._path,
            "--stdout",
            "-z",  # no pause after the last sentence
            "-v",
            settings.voice,
            "-s",
            str(settings.words_per_minute),
            "-p",
            str(settings.pitch),
        ]
        with subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        ) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(text.encode())
                proc.stdin.close()
                rate_hz = _read_wav_header(proc.stdout)
                odd = b""
                while not sink.cancelled.is_set():
                    block = proc.stdout.read(self._READ_BYTES)
                    if not block:
                        break
                    block = odd + block
                    usable = len(block) // 2 * 2
                    odd = block[usable:]
                    if usable:
                        sink.audio(np.frombuffer(block[:usable], dtype="<i2").copy(), rate_hz)
            finally:
                if proc.poll() is None:
                    proc.kill()
            if proc.wait() != 0 and not sink.cancelled.is_set():
                raise _failure(f"{self._path} exited with {proc.returncode}")


def _read_exact(stream: Readable, n: int) -> bytes:
    data = b""
    while len(data) < n:
        block = stream.read(n - len(data))
        if not block:
            raise _failure("espeak-ng ended inside its WAV header")
        data += block
    return data


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def _read_wav_header(stream: Readable) -> int:
    """Read a RIFF/WAVE header up to the data chunk; the sample rate (Hz) of mono s16 PCM."""
    riff, _, wave = struct.unpack("<4sI4s", _read_exact(stream, 12))
    if riff != b"RIFF" or wave != b"WAVE":
        raise _failure("espeak-ng did not write a WAV")
    rate_hz = 0
    while True:
        chunk_id, size = struct.unpack("<4sI", _read_exact(stream, 8))
        if chunk_id == b"data":
            if not rate_hz:
                raise _failure("WAV data before its fmt chunk")
            return rate_hz
        if size > 1 << 16:
            raise _failure(f"unexpected {size}-byte WAV chunk {chunk_id!r}")
        body = _read_exact(stream, size + (size & 1))
        if chunk_id == b"fmt ":
            if len(body) < 16:
                raise _failure("short WAV fmt chunk")
            fmt, channels, rate_hz, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if fmt != 1 or channels != 1 or bits != 16:
                raise _failure("espeak-ng WAV is not mono 16-bit PCM")


# --------------------------------------------------------------------- the engine


class Engine:
    """The process's espeak backend and the one thread that calls it."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
        self.lock = threading.Lock()

    def speak(self, text: str, settings: EspeakTtsSettings, sink: Sink) -> None:
        with self.lock:
            self.backend.speak(text, settings, sink)


_engines: dict[tuple[str, str | None, str | None, str], Engine] = {}
_engines_lock = threading.Lock()


def engine(settings: EspeakTtsSettings) -> Engine:
    """The shared engine for these settings' backend (loaded once per process)."""
    key = (settings.backend, settings.library_path, settings.data_path, settings.binary)
    with _engines_lock:
        found = _engines.get(key)
        if found is None:
            found = Engine(_load_backend(settings))
            _engines[key] = found
        return found


def _load_backend(settings: EspeakTtsSettings) -> Backend:
    library_error: BaseException | None = None
    if settings.backend in ("auto", "library"):
        try:
            return LibraryBackend(settings.library_path, settings.data_path)
        except (OSError, ImportError, AttributeError, RuntimeError) as exc:
            library_error = exc
            if settings.backend == "library":
                raise _failure(f"cannot load libespeak-ng: {exc}") from exc
    try:
        return BinaryBackend(settings.binary)
    except OSError as exc:
        raise _failure(f"no espeak-ng: library ({library_error}), binary ({exc})") from exc


# ------------------------------------------------------------------------- phrases

_PHRASE_END = re.compile(r"[.!?;:\n]+[\"')\]]*(?:\s+|$)")


class PhraseSplitter:
    """Cuts pushed text into phrases to speak: after end punctuation, or at a length cap."""

    def __init__(self, max_chars: int) -> None:
        self._max_chars = max_chars
        self._buffer = ""

    def push(self, text: str) -> list[str]:
        """Phrases completed by ``text``, in order."""
        self._buffer += text
        phrases: list[str] = []
        while True:
            cut = self._cut()
            if cut is None:
                break
            phrase, self._buffer = self._buffer[:cut], self._buffer[cut:]
            if phrase.strip():
                phrases.append(phrase.strip())
        return phrases

    def rest(self) -> str:
        """What is left (the flush); empties the buffer."""
        rest, self._buffer = self._buffer.strip(), ""
        return rest

    def _cut(self) -> int | None:
        match = _PHRASE_END.search(self._buffer)
        if match is not None:
            return match.end()
        if len(self._buffer) >= self._max_chars:
            head = self._buffer[: self._max_chars]
            space = max(head.rfind(c) for c in " \t\n\r")  # the last break between words
            return space + 1 if space > 0 else self._max_chars
        return None


# ------------------------------------------------------------------------- stream


class _End:
    """Marks the end of the chunk queue."""


_END: Final = _End()


class _Generation:
    """One stream's resampler, chunker and word timeline; runs on the engine thread."""

    def __init__(
        self,
        generation: int,
        rate_hz: int,
        settings: EspeakTtsSettings,
        post: Callable[[TtsChunk | ProviderError | _End], None],
    ) -> None:
        self.generation = generation
        self._pause_ms = settings.phrase_pause_ms
        self.cancelled = threading.Event()
        self._failed = False
        self._rate_hz = rate_hz
        self._chunk_samples = rate_hz * settings.chunk_ms // 1000
        self._post = post
        self._resampler: soxr.ResampleStream | None = None
        self._native_rate_hz = 0
        self._phrase_offset = 0  # native samples before the current phrase
        self._native_total = 0
        self._out: list[Pcm] = []
        self._out_samples = 0
        self._open_word: tuple[str, int] | None = None  # (text, native sample)
        self._words: list[Word] = []

    # -- Sink

    def audio(self, pcm: Pcm, rate_hz: int) -> None:
        if self._resampler is None:
            self._native_rate_hz = rate_hz
            self._resampler = soxr.ResampleStream(rate_hz, self._rate_hz, 1, dtype="int16")
        elif rate_hz != self._native_rate_hz:
            raise _failure(f"native rate changed from {self._native_rate_hz} to {rate_hz} Hz")
        self._native_total += len(pcm)
        out: Pcm = self._resampler.resample_chunk(pcm)
        self._append(out)

    def word_start(self, text: str, sample: int) -> None:
        self.word_end(sample)
        if text.strip():
            self._open_word = (text.strip(), self._phrase_offset + sample)

    def word_end(self, sample: int) -> None:
        if self._open_word is None:
            return
        text, start = self._open_word
        self._open_word = None
        end = max(self._phrase_offset + sample, start)
        rate = self._native_rate_hz or 22050
        self._words.append(Word(text=text, start_ms=start * 1000 / rate, end_ms=end * 1000 / rate))

    # -- jobs

    def speak(self, engine: Engine, text: str, settings: EspeakTtsSettings) -> None:
        """Speak one phrase (engine thread)."""
        if self.cancelled.is_set() or self._failed:
            return
        try:
            if self._native_total and self._pause_ms:
                pause = self._native_rate_hz * self._pause_ms // 1000
                self.audio(np.zeros(pause, dtype=np.int16), self._native_rate_hz)
                self._phrase_offset = self._native_total
            engine.speak(text, settings, self)
            self.word_end(self._native_total - self._phrase_offset)
            self._phrase_offset = self._native_total
        except ProviderError as exc:
            self._fail(exc)
        except Exception as exc:  # a backend failure ends the generation with an error
            self._fail(_failure(f"{type(exc).__name__}: {exc}"))

    def _fail(self, error: ProviderError) -> None:
        self._failed = True
        self._post(error)

    def finish(self) -> None:
        """Deliver the resampler's tail and the ``done`` chunk (engine thread)."""
        if self.cancelled.is_set() or self._failed:
            return
        if self._resampler is not None:
            tail: Pcm = self._resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
            self._append(tail)  # whole chunks first; the done chunk holds the rest
        pcm = np.concatenate(self._out).tobytes() if self._out else b""
        self._out, self._out_samples = [], 0
        words, self._words = tuple(self._words), []
        self._post(
            TtsChunk(
                generation=self.generation,
                received_ns=time.monotonic_ns(),
                pcm=pcm,
                words=words,
                done=True,
            )
        )
        self._post(_END)

    def _append(self, out: Pcm) -> None:
        if len(out):
            self._out.append(out)
            self._out_samples += len(out)
        while self._out_samples >= self._chunk_samples and not self.cancelled.is_set():
            joined = np.concatenate(self._out)
            chunk, rest = joined[: self._chunk_samples], joined[self._chunk_samples :]
            self._out = [rest] if len(rest) else []
            self._out_samples = len(rest)
            words, self._words = tuple(self._words), []
            self._post(
                TtsChunk(
                    generation=self.generation,
                    received_ns=time.monotonic_ns(),
                    pcm=chunk.tobytes(),
                    words=words,
                )
            )


class EspeakTtsStream:
    """One generation spoken by espeak-ng; chunks of ``chunk_ms`` at ``rate_hz``."""

    def __init__(
        self, engine: Engine, settings: EspeakTtsSettings, *, generation: int, rate_hz: int
    ) -> None:
        self.generation = generation
        self.rate_hz = rate_hz
        self._engine = engine
        self._settings = settings
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[TtsChunk | ProviderError | _End] = asyncio.Queue()
        self._splitter = PhraseSplitter(settings.max_phrase_chars)
        self._gen = _Generation(generation, rate_hz, settings, self._post)
        self._flushed = False
        self._cancelled = False

    async def push_text(self, text: str) -> None:
        """Add text; complete phrases start synthesising now, in order."""
        if self._flushed or self._cancelled:
            return
        for phrase in self._splitter.push(text):
            self._submit(self._gen.speak, self._engine, phrase, self._settings)

    async def flush(self) -> None:
        """Speak what remains, then deliver the ``done`` chunk."""
        if self._flushed or self._cancelled:
            return
        self._flushed = True
        rest = self._splitter.rest()
        if rest:
            self._submit(self._gen.speak, self._engine, rest, self._settings)
        self._submit(self._gen.finish)

    async def cancel(self) -> None:
        """Abort synthesis and end :meth:`chunks` now; queued audio is dropped. Idempotent."""
        if self._cancelled:
            return
        self._cancelled = True
        self._gen.cancelled.set()
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_END)

    async def chunks(self) -> AsyncIterator[TtsChunk]:
        """Chunks in order; ends after the ``done`` chunk or :meth:`cancel`."""
        while not self._cancelled:
            item = await self._queue.get()
            if isinstance(item, _End) or self._cancelled:
                self._queue.put_nowait(_END)
                return
            if isinstance(item, ProviderError):
                self._queue.put_nowait(_END)
                raise item
            yield item

    def _submit(self, job: Callable[..., None], *args: object) -> None:
        try:
            self._engine.executor.submit(job, *args)
        except RuntimeError as exc:  # engine shut down
            self._post(_failure(f"espeak worker stopped: {exc}"))

    def _post(self, item: TtsChunk | ProviderError | _End) -> None:
        """From any thread: hand an item to the loop unless cancelled."""
        if self._gen.cancelled.is_set():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed under a late job
            self._loop.call_soon_threadsafe(self._deliver, item)

    def _deliver(self, item: TtsChunk | ProviderError | _End) -> None:
        if not self._cancelled:
            self._queue.put_nowait(item)


# ----------------------------------------------------------------------- provider


class EspeakTts:
    """The offline TTS provider; all streams share the process's espeak engine."""

    name = PROVIDER

    def __init__(self, settings: EspeakTtsSettings | None = None) -> None:
        self.settings = settings or EspeakTtsSettings()
        _check_settings(self.settings)
        self._engine: Engine | None = None

    @property
    def backend(self) -> str:
        """``library`` or ``binary`` once loaded (after :meth:`prewarm` or a stream)."""
        return self._engine.backend.name if self._engine is not None else ""

    async def open_stream(self, *, generation: int, rate_hz: int) -> EspeakTtsStream:
        """A generation producing PCM at ``rate_hz`` (8000, 16000 or 24000)."""
        if rate_hz not in OUTPUT_RATES_HZ:
            raise ValueError(f"rate_hz must be one of {OUTPUT_RATES_HZ}, got {rate_hz}")
        await self.prewarm()
        assert self._engine is not None
        return EspeakTtsStream(self._engine, self.settings, generation=generation, rate_hz=rate_hz)

    async def prewarm(self) -> None:
        """Load the library (or find the binary) off the loop."""
        if self._engine is None:
            self._engine = await asyncio.to_thread(engine, self.settings)

    async def aclose(self) -> None:
        """Nothing to release: the engine lives as long as the process."""
