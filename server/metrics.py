"""Process metrics, exported in Prometheus text format at ``GET /metrics``.

Media statistics (jitter buffer, packets, latching, RTCP) are kept per call by
the transport and added here once, when the call ends
(:meth:`Metrics.observe_call_media`): nothing on the packet path touches
Prometheus.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from server.transport import MediaStats

_LATENCY_BUCKETS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0)
_RATIO_BUCKETS = (0.0, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
_JITTER_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2)


class Metrics:
    """One registry per server, so tests can run several servers in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_calls = Gauge("voxgate_active_calls", "Calls in progress", registry=r)
        self.calls = Counter(
            "voxgate_calls",
            "Calls ended, by transport and reason",
            ["transport", "reason"],
            registry=r,
        )
        self.refused_calls = Counter(
            "voxgate_refused_calls", "Calls refused, by reason", ["reason"], registry=r
        )
        self.bad_messages = Counter(
            "voxgate_bad_messages",
            "Malformed or unexpected wire messages",
            ["transport"],
            registry=r,
        )
        self.dropped_frames = Counter(
            "voxgate_outbound_dropped_frames",
            "Outbound frames dropped for a slow peer",
            registry=r,
        )
        self.clock_lateness = Histogram(
            "voxgate_media_clock_lateness_seconds",
            "How late media-clock ticks ran",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
            registry=r,
        )
        self.clock_skipped = Counter(
            "voxgate_media_clock_skipped_ticks", "Ticks skipped after a stall", registry=r
        )
        self.marks = Counter(
            "voxgate_marks",
            "Playback marks echoed by the far end, by outcome (played, cleared, unknown)",
            ["transport", "outcome"],
            registry=r,
        )
        self.turn_latency = Histogram(
            "voxgate_turn_latency_seconds",
            "End of the caller's speech to the first reply frame sent",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.barge_in_yield = Histogram(
            "voxgate_barge_in_yield_seconds",
            "Onset of the caller's speech over the bot to playout paused",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.barge_in_confirm = Histogram(
            "voxgate_barge_in_confirm_seconds",
            "Onset of the caller's speech over the bot to the interruption confirmed",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        self.stage_latency = Histogram(
            "voxgate_stage_latency_seconds",
            "Pipeline stage latency: eou, stt_final, llm_first_token, tts_first_audio, turn_total",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.turn_overhead = Histogram(
            "voxgate_turn_overhead_seconds",
            "turn_total minus the provider and endpointing stages: the server's own time",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5),
            registry=r,
        )
        self.budget_violations = Counter(
            "voxgate_budget_violations",
            "Pipeline stages that ran past their [budgets] deadline",
            ["stage"],
            registry=r,
        )
        self.fallbacks = Counter(
            "voxgate_fallbacks",
            "Fallbacks taken: retry, next provider, partial transcript, filler, apology",
            ["stage", "action"],
            registry=r,
        )
        self.provider_errors = Counter(
            "voxgate_provider_errors",
            "Provider failures by provider and kind (auth, rate_limited, timeout, ...)",
            ["provider", "kind"],
            registry=r,
        )

        self.media_packets_in = Counter(
            "voxgate_media_packets_in",
            "Inbound media packets of ended calls, by transport and outcome "
            "(received, audio, lost, late, duplicate, wrong_source, ...)",
            ["transport", "outcome"],
            registry=r,
        )
        self.media_frames_in = Counter(
            "voxgate_media_frames_in",
            "20 ms frames of caller audio played to ended calls, by transport and kind "
            "(played; of those concealed, silence, inserted; dropped)",
            ["transport", "kind"],
            registry=r,
        )
        self.media_packets_out = Counter(
            "voxgate_media_packets_out",
            "Outbound media packets of ended calls, by transport and outcome (sent, errors)",
            ["transport", "outcome"],
            registry=r,
        )
        self.media_frames_out = Counter(
            "voxgate_media_frames_out",
            "20 ms frames for the far end of ended calls, by transport and kind "
            "(offered, silence, dropped)",
            ["transport", "kind"],
            registry=r,
        )
        self.media_events = Counter(
            "voxgate_media_events",
            "Media events of ended calls, by transport and event "
            "(latches, ssrc_changes, resyncs, rtcp_in, rtcp_out, timeouts, ...)",
            ["transport", "event"],
            registry=r,
        )
        self.media_concealment = Histogram(
            "voxgate_media_concealment_ratio",
            "Per ended call: caller frames made up (concealed or silence) / frames played",
            ["transport"],
            buckets=_RATIO_BUCKETS,
            registry=r,
        )
        self.media_jitter = Histogram(
            "voxgate_media_jitter_seconds",
            "Per ended call: RFC 3550 interarrival jitter of the caller's stream at the end",
            ["transport"],
            buckets=_JITTER_BUCKETS,
            registry=r,
        )

    def observe_call_media(self, transport: str, media: MediaStats | None) -> None:
        """Add one ended call's media statistics (``transport``: the calls' label)."""
        if media is None:
            return
        for counter, counts in (
            (self.media_packets_in, media.packets_in),
            (self.media_frames_in, media.frames_in),
            (self.media_packets_out, media.packets_out),
            (self.media_frames_out, media.frames_out),
            (self.media_events, media.events),
        ):
            for name, count in counts.items():
                if count >= 0:
                    counter.labels(transport, name).inc(count)
        played = media.frames_in.get("played", 0)
        if played > 0:
            made_up = media.frames_in.get("concealed", 0) + media.frames_in.get("silence", 0)
            self.media_concealment.labels(transport).observe(min(1.0, made_up / played))
        if media.jitter_ms is not None:
            self.media_jitter.labels(transport).observe(media.jitter_ms / 1000)

    def observe_stage_ms(self, stage: str, latency_ms: float) -> None:
        self.stage_latency.labels(stage).observe(latency_ms / 1000)

    def observe_overhead_ms(self, latency_ms: float) -> None:
        self.turn_overhead.observe(max(0.0, latency_ms) / 1000)

    def count_violation(self, stage: str) -> None:
        self.budget_violations.labels(stage).inc()

    def count_fallback(self, stage: str, action: str) -> None:
        self.fallbacks.labels(stage, action).inc()

    def count_provider_error(self, provider: str, kind: str) -> None:
        self.provider_errors.labels(provider, kind).inc()

    def observe_turn_ms(self, latency_ms: float) -> None:
        self.turn_latency.observe(latency_ms / 1000)

    def observe_yield_ms(self, latency_ms: float) -> None:
        self.barge_in_yield.observe(latency_ms / 1000)

    def observe_confirm_ms(self, latency_ms: float) -> None:
        self.barge_in_confirm.observe(latency_ms / 1000)
