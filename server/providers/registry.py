"""Which providers exist, their ``[providers.*]`` settings, and one process's clients.

Every provider has a name that is both its TOML section (``[providers.deepgram]``)
and what ``[agent] stt/llm/tts`` chains list.  The offline providers (``sphinx``,
``rules``, ``espeak``) are configured by default; the others only once their
section is present (it needs at least ``api_key``).

A :class:`ProviderSet` holds the clients of one server process, built once and
shared by every call: the provider objects pool connections and decoders.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Final, TypeVar

import aiohttp
import msgspec

from server.providers.assemblyai import AssemblyAi, AssemblyAiSettings
from server.providers.base import AuthError, LlmProvider, ProviderError, SttProvider, TtsProvider
from server.providers.cartesia import CartesiaSettings, CartesiaTts
from server.providers.deepgram_stt import DeepgramStt, DeepgramSttSettings
from server.providers.deepgram_tts import DeepgramTts, DeepgramTtsSettings
from server.providers.elevenlabs import ElevenLabsHttpTts, ElevenLabsSettings, ElevenLabsTts
from server.providers.espeak_tts import EspeakTts, EspeakTtsSettings
from server.providers.openai_chat import OpenAiChatProvider, OpenAiChatSettings
from server.providers.openai_realtime import OpenAiRealtimeSettings
from server.providers.rules_llm import RulesLlm, RulesLlmSettings
from server.providers.sphinx_stt import SphinxStt, SphinxSttSettings

log = logging.getLogger(__name__)

_S = TypeVar("_S")

STAGE_PROVIDERS: Final[dict[str, frozenset[str]]] = {
    "stt": frozenset({"sphinx", "deepgram", "assemblyai"}),
    "llm": frozenset({"rules", "openai"}),
    "tts": frozenset({"espeak", "elevenlabs", "elevenlabs_http", "cartesia", "aura"}),
}
"""Provider names each pipeline stage can use."""


class ProvidersSection(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[providers.<name>]``: each provider's settings (see its module for the fields)."""

    sphinx: SphinxSttSettings = msgspec.field(default_factory=SphinxSttSettings)
    rules: RulesLlmSettings = msgspec.field(default_factory=RulesLlmSettings)
    espeak: EspeakTtsSettings = msgspec.field(default_factory=EspeakTtsSettings)
    deepgram: DeepgramSttSettings | None = None
    assemblyai: AssemblyAiSettings | None = None
    openai: OpenAiChatSettings | None = None
    openai_realtime: OpenAiRealtimeSettings | None = None
    elevenlabs: ElevenLabsSettings | None = None
    """ElevenLabs over its multi-context WebSocket."""
    elevenlabs_http: ElevenLabsSettings | None = None
    """ElevenLabs over HTTP streaming (one request per utterance)."""
    cartesia: CartesiaSettings | None = None
    aura: DeepgramTtsSettings | None = None
    """Deepgram Aura TTS."""


@dataclass(frozen=True)
class Chains:
    """The providers of each stage in fallback order, as ``[agent]`` lists them."""

    stt: tuple[str, ...]
    llm: tuple[str, ...]
    tts: tuple[str, ...]


class ProviderSet:
    """The provider clients of one process; :meth:`start` before use, :meth:`aclose` after."""

    def __init__(self, section: ProvidersSection, chains: Chains) -> None:
        self.section = section
        self.chains = chains
        self._session: aiohttp.ClientSession | None = None
        self.stt: list[tuple[str, SttProvider]] = []
        """``(name, client)`` in fallback order; likewise ``llm`` and ``tts``."""
        self.llm: list[tuple[str, LlmProvider]] = []
        self.tts: list[tuple[str, TtsProvider]] = []
        self.offline_tts = EspeakTts(section.espeak)
        """Speaks fillers and apologies whatever the chain (and is its espeak member)."""

    async def start(self) -> None:
        """Build every client of the chains and warm the ones that pool connections.

        A provider that refuses its credentials at warm-up is logged with the
        setting to fix; it stays in its chain (the fallbacks cover it per turn).
        """
        # No pool limit: every call holds STT (and some TTS) sockets for its whole
        # length, and aiohttp's default cap of 100 would starve the LLM requests.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.stt = [(name, self._stt(name)) for name in self.chains.stt]
        self.llm = [(name, self._llm(name)) for name in self.chains.llm]
        self.tts = [(name, self._tts(name)) for name in self.chains.tts]
        warm: list[tuple[str, SphinxStt | TtsProvider]] = [
            (name, stt) for name, stt in self.stt if isinstance(stt, SphinxStt)
        ]
        warm.extend(self.tts)
        results = await asyncio.gather(
            *(provider.prewarm() for _, provider in warm), return_exceptions=True
        )
        for (name, _), result in zip(warm, results, strict=True):
            if isinstance(result, AuthError):
                log.error(
                    "provider %s refused its credentials at start-up (%s): check "
                    "providers.%s.api_key",
                    name,
                    result,
                    name,
                )
            elif isinstance(result, ProviderError):
                log.warning("provider %s could not be warmed up: %s", name, result)
            elif isinstance(result, BaseException):
                raise result

    async def aclose(self) -> None:
        """Close every client, then the shared HTTP session."""
        named: list[tuple[str, object]] = [*self.stt, *self.llm, *self.tts]
        if all(p is not self.offline_tts for _, p in named):
            named.append(("espeak", self.offline_tts))
        for name, provider in named:
            close = getattr(provider, "aclose", None)
            if close is not None:
                try:
                    await close()
                except ProviderError as exc:
                    log.debug("closing %s: %s", name, exc)
        if self._session is not None:
            await self._session.close()

    # -- builders

    def _need(self, name: str, settings: _S | None) -> _S:
        if settings is None:  # load_config refuses this; direct callers get a clear error
            raise ValueError(f"[providers.{name}] is not configured")
        return settings

    def _stt(self, name: str) -> SttProvider:
        s = self.section
        if name == "sphinx":
            return SphinxStt(s.sphinx)
        if name == "deepgram":
            return DeepgramStt(self._need(name, s.deepgram), self._session)
        if name == "assemblyai":
            return AssemblyAi(self._need(name, s.assemblyai), self._session)
        raise ValueError(f"unknown STT provider {name!r}")

    def _llm(self, name: str) -> LlmProvider:
        s = self.section
        if name == "rules":
            return RulesLlm(s.rules)
        if name == "openai":
            return OpenAiChatProvider(self._need(name, s.openai), session=self._session)
        raise ValueError(f"unknown LLM provider {name!r}")

    def _tts(self, name: str) -> TtsProvider:
        s = self.section
        if name == "espeak":
            return self.offline_tts
        if name == "elevenlabs":
            return ElevenLabsTts(self._need(name, s.elevenlabs), session=self._session)
        if name == "elevenlabs_http":
            return ElevenLabsHttpTts(self._need(name, s.elevenlabs_http), session=self._session)
        if name == "cartesia":
            return CartesiaTts(self._need(name, s.cartesia), session=self._session)
        if name == "aura":
            return DeepgramTts(self._need(name, s.aura), session=self._session)
        raise ValueError(f"unknown TTS provider {name!r}")
