// voxgate demo page: one WebRTC call to the agent, driven by a person or by
// automated tests through `window.voxgate` (see the names at the bottom).
//
// Signalling is non-trickle: the whole offer goes to POST /webrtc/offer and the
// answer comes back in the response; DELETE /whip/{call_id} hangs up. The data
// channel "voxgate" carries JSON messages both ways.
"use strict";

(() => {
  const OFFER_URL = "/webrtc/offer";
  const HANGUP_URL = (callId) => `/whip/${encodeURIComponent(callId)}`;

  const DEFAULT_AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
  const GATHER_TIMEOUT_MS = 2000;
  const CONNECT_TIMEOUT_MS = 15000;
  const LEVEL_FLOOR_DB = -120;
  const LOUD_DB = -40; // a meter sample above this counts as "loud" (mic and remote)
  const METER_PERIOD_MS = 10;
  const METER_DOM_EVERY = 5; // redraw the meters every 5th sample (~50 ms)
  const BURST_END_MS = 200; // a remote burst ends after this long below LOUD_DB
  const PROBE_POLL_MS = 2; // browsers clamp repeating timers to ~4 ms
  const PROBE_QUIET_MS = 100; // remote must be quiet this long before a probe burst
  const PROBE_QUIET_MAX_MS = 3000;

  /** Server turn-machine state → the state a person sees. */
  const DISPLAY_STATE = {
    listening: "listening",
    user_speaking: "listening",
    interrupted: "listening",
    thinking: "thinking",
    bot_speaking: "speaking",
    paused: "speaking",
  };
  const STAGE_ORDER = ["eou", "stt_final", "llm_first_token", "tts_first_audio", "turn_total"];
  const ROLES = ["user", "assistant"];
  const ROLE_LABEL = { user: "You: ", assistant: "Agent: " };

  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** The public object. Arrays are cleared in place on each start(). */
  const vg = {
    state: "idle",
    turnState: null,
    callId: null,
    error: null,
    pc: null,
    channel: null,
    transcript: [],
    turns: [],
    events: [],
    log: [],
    stats: { micLoud: 0, micSamples: 0, remoteLoud: 0, remoteSamples: 0 },
    remoteActivity: [],
  };

  // The live call; callbacks of an older call compare against it and do nothing.
  let session = null;
  const interim = { user: "", assistant: "" };
  const lines = new Map(); // "role:generation" -> {entry, li} of final lines, for corrections
  const levels = { mic: LEVEL_FLOOR_DB, remote: LEVEL_FLOOR_DB };

  function note(message) {
    vg.log.push(`${new Date().toISOString()} ${message}`);
  }

  // ---------------------------------------------------------------- levels

  /** An AnalyserNode on `stream` (not connected to the speakers) with its sample buffer. */
  function makeMeter(ctx, stream, fftSize) {
    const source = ctx.createMediaStreamSource(stream);
    const analyser = ctx.createAnalyser();
    analyser.fftSize = fftSize;
    analyser.smoothingTimeConstant = 0;
    source.connect(analyser);
    return { source, analyser, buf: new Float32Array(analyser.fftSize) };
  }

  /** Time-domain RMS of the analyser's current window, dBFS, floored at LEVEL_FLOOR_DB. */
  function rmsDb(meter) {
    if (!meter) return LEVEL_FLOOR_DB;
    meter.analyser.getFloatTimeDomainData(meter.buf);
    let sum = 0;
    for (let i = 0; i < meter.buf.length; i++) sum += meter.buf[i] * meter.buf[i];
    const rms = Math.sqrt(sum / meter.buf.length);
    return rms > 0 ? Math.max(LEVEL_FLOOR_DB, 20 * Math.log10(rms)) : LEVEL_FLOOR_DB;
  }

  /** One meter sample (every METER_PERIOD_MS): levels, loud counters, remote bursts. */
  function sampleMeters(s) {
    if (s !== session) return;
    const now = Date.now();
    if (s.micMeter) {
      levels.mic = rmsDb(s.micMeter);
      vg.stats.micSamples++;
      if (levels.mic > LOUD_DB) vg.stats.micLoud++;
    }
    if (s.remoteMeter) {
      levels.remote = rmsDb(s.remoteMeter);
      vg.stats.remoteSamples++;
      trackBursts(s, levels.remote > LOUD_DB, now);
    }
    if (++s.meterTicks % METER_DOM_EVERY === 0) drawMeters();
  }

  function trackBursts(s, loud, now) {
    const open = vg.remoteActivity.length ? vg.remoteActivity[vg.remoteActivity.length - 1] : null;
    if (loud) {
      vg.stats.remoteLoud++;
      if (!open || open.end !== null) vg.remoteActivity.push({ start: now, end: null });
      s.quietSince = null;
    } else if (open && open.end === null) {
      if (s.quietSince === null) s.quietSince = now;
      else if (now - s.quietSince >= BURST_END_MS) open.end = s.quietSince;
    }
  }

  function closeOpenBurst(s) {
    const open = vg.remoteActivity[vg.remoteActivity.length - 1];
    if (open && open.end === null) open.end = s.quietSince ?? Date.now();
  }

  function drawMeters() {
    drawMeter("mic", levels.mic);
    drawMeter("agent", levels.remote);
  }

  function drawMeter(name, db) {
    $(`${name}-meter`).value = db;
    $(`${name}-db`).textContent = db <= LEVEL_FLOOR_DB ? "−∞ dBFS" : `${db.toFixed(0)} dBFS`;
  }

  // ---------------------------------------------------------------- state and DOM

  function setState(state, turnState) {
    vg.state = state;
    if (turnState !== undefined) vg.turnState = turnState;
    const out = $("state");
    out.textContent = state;
    out.dataset.state = state;
    const live = state !== "idle" && state !== "ended";
    const button = $("call");
    button.textContent = live ? "Stop" : "Start";
    button.setAttribute("aria-pressed", String(live));
    setInputsEnabled(state !== "idle" && state !== "ended" && state !== "connecting");
  }

  function setInputsEnabled(enabled) {
    for (const el of document.querySelectorAll("#say input, #say button, #keypad button")) {
      el.disabled = !enabled;
    }
  }

  function showError(message) {
    const el = $("error");
    el.textContent = message || "";
    el.hidden = !message;
  }

  function transcriptItem(role, text) {
    const li = document.createElement("li");
    li.className = role;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = ROLE_LABEL[role];
    li.append(who, text);
    return li;
  }

  function renderTranscriptLine(role, text) {
    const li = transcriptItem(role, text);
    $("transcript").append(li);
    li.scrollIntoView({ block: "nearest" });
    return li;
  }

  function renderInterim() {
    const items = ROLES.filter((role) => interim[role]).map((role) => transcriptItem(role, interim[role]));
    $("interim").replaceChildren(...items);
  }

  function renderTurn(turn) {
    let li = document.querySelector(`#turns li[data-generation="${CSS.escape(String(turn.generation))}"]`);
    if (!li) {
      li = document.createElement("li");
      li.dataset.generation = String(turn.generation);
      $("turns").append(li);
    }
    const latency = document.createElement("span");
    latency.className = "latency";
    latency.textContent = turn.latency_ms == null ? "— ms" : `${Math.round(turn.latency_ms)} ms`;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = [`#${turn.generation}`, turn.kind, turn.outcome].filter(Boolean).join(" · ");
    const parts = [latency, meta];
    const stages = formatStages(turn);
    if (stages) {
      const line = document.createElement("span");
      line.className = "stages";
      line.textContent = stages;
      parts.push(line);
    }
    li.replaceChildren(...parts);
  }

  function formatStages(turn) {
    const stages = turn.stages_ms || {};
    const keys = STAGE_ORDER.filter((k) => k in stages);
    for (const k of Object.keys(stages)) if (!keys.includes(k)) keys.push(k);
    const parts = keys.filter((k) => stages[k] != null).map((k) => `${k} ${Math.round(stages[k])}`);
    if (turn.overhead_ms != null) parts.push(`overhead ${Math.round(turn.overhead_ms)}`);
    return parts.length ? `${parts.join(" · ")} ms` : "";
  }

  function resetCallData() {
    for (const arr of [vg.transcript, vg.turns, vg.events, vg.remoteActivity]) arr.length = 0;
    Object.assign(vg.stats, { micLoud: 0, micSamples: 0, remoteLoud: 0, remoteSamples: 0 });
    vg.callId = null;
    vg.error = null;
    vg.turnState = null;
    interim.user = "";
    interim.assistant = "";
    lines.clear();
    levels.mic = LEVEL_FLOOR_DB;
    levels.remote = LEVEL_FLOOR_DB;
    $("transcript").replaceChildren();
    $("turns").replaceChildren();
    renderInterim();
    drawMeters();
    showError(null);
  }

  // ---------------------------------------------------------------- data channel

  function onChannelMessage(s, event) {
    if (s !== session) return;
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch (err) {
      note(`unparsable data-channel message: ${String(event.data).slice(0, 200)}`);
      return;
    }
    if (msg === null || typeof msg !== "object") {
      note(`non-object data-channel message: ${String(event.data).slice(0, 200)}`);
      return;
    }
    vg.events.push({ ...msg, at: Date.now() });
    switch (msg.type) {
      case "hello":
        if (msg.call_id) vg.callId = msg.call_id;
        break;
      case "state":
        onTurnState(msg.state);
        break;
      case "transcript":
        onTranscript(msg);
        break;
      case "turn":
        updateTurn(msg.generation, { latency_ms: msg.latency_ms });
        break;
      case "stages":
        updateTurn(msg.generation, {
          stages_ms: msg.stages_ms || {},
          kind: msg.kind,
          outcome: msg.outcome,
          overhead_ms: msg.overhead_ms ?? null,
        });
        break;
      case "bye":
        note(`bye: ${msg.reason ?? ""}`);
        teardown(s, null);
        break;
      case "error":
        note(`server refused: ${msg.reason ?? ""}`);
        showNotice(`Server: ${msg.reason ?? "refused"}`);
        break;
      default:
        note(`ignored data-channel message type ${JSON.stringify(msg.type)}`);
    }
  }

  function onTurnState(raw) {
    if (vg.state === "ended") return;
    const shown = DISPLAY_STATE[raw];
    if (!shown) {
      note(`unknown turn state ${JSON.stringify(raw)}`);
      vg.turnState = raw;
      return;
    }
    setState(shown, raw);
  }

  function onTranscript(msg) {
    const role = msg.role;
    if (!ROLES.includes(role) || typeof msg.text !== "string") {
      note(`bad transcript message: ${JSON.stringify(msg)}`);
      return;
    }
    if (msg.final) {
      interim[role] = "";
      // A later final of the same reply corrects it (cut to what was heard).
      const generation = typeof msg.generation === "number" ? msg.generation : null;
      const line = generation === null ? null : lines.get(`${role}:${generation}`);
      if (line) {
        line.entry.text = msg.text;
        line.li.lastChild.textContent = msg.text;
      } else {
        const entry = { role, text: msg.text };
        vg.transcript.push(entry);
        const li = renderTranscriptLine(role, msg.text);
        if (generation !== null) lines.set(`${role}:${generation}`, { entry, li });
      }
    } else {
      interim[role] = msg.text;
    }
    renderInterim();
  }

  /** Merges `fields` into the turn of `generation`, creating it if needed. */
  function updateTurn(generation, fields) {
    let turn = vg.turns.find((t) => t.generation === generation);
    if (!turn) {
      turn = { generation, latency_ms: null, stages_ms: {} };
      vg.turns.push(turn);
    }
    Object.assign(turn, fields);
    renderTurn(turn);
  }

  function showNotice(text) {
    const li = document.createElement("li");
    li.className = "notice";
    li.textContent = text;
    $("transcript").append(li);
  }

  function send(msg) {
    const ch = vg.channel;
    if (!ch || ch.readyState !== "open") throw new Error("not connected: the data channel is not open");
    ch.send(JSON.stringify(msg));
  }

  /** Sends a typed message to the agent. Throws if the channel is not open. */
  function sendText(text) {
    const t = String(text).trim();
    if (!t) throw new Error("empty text");
    send({ type: "text", text: t });
  }

  /** Sends keypad digits (0-9 * # A-D). Throws on other characters or a closed channel. */
  function sendDigits(digits) {
    const d = String(digits);
    if (!/^[0-9*#A-D]+$/.test(d)) throw new Error(`digits must be 0-9, *, # or A-D: ${JSON.stringify(d)}`);
    send({ type: "dtmf", digits: d });
  }

  // ---------------------------------------------------------------- call set-up

  /** Keeps only 127.0.0.1 `a=candidate` lines of an SDP. */
  function loopbackCandidatesOnly(sdp) {
    const lines = sdp.split("\r\n");
    const kept = lines.filter((line) => {
      if (!line.startsWith("a=candidate:")) return true;
      return line.split(" ")[4] === "127.0.0.1";
    });
    const dropped = lines.length - kept.length;
    if (dropped) note(`dropped ${dropped} non-loopback candidate line(s) from the offer`);
    if (!kept.some((line) => line.startsWith("a=candidate:"))) {
      note("the offer has no 127.0.0.1 candidate (Chromium needs --allow-loopback-in-peer-connection)");
    }
    return kept.join("\r\n");
  }

  /** Resolves when ICE gathering is complete or after `timeoutMs`, whichever is first. */
  function iceGathered(pc, timeoutMs) {
    if (pc.iceGatheringState === "complete") return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (complete) => {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        resolve(complete);
      };
      const check = () => {
        if (pc.iceGatheringState === "complete") done(true);
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  /** Resolves when the pc is connected; rejects if it fails, closes, or the call ends first. */
  function connected(s, timeoutMs) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => finish(new Error(`not connected after ${timeoutMs} ms`)), timeoutMs);
      const finish = (err) => {
        clearTimeout(timer);
        s.pc.removeEventListener("connectionstatechange", check);
        s.abortConnect = null;
        if (err) reject(err);
        else resolve();
      };
      const check = () => {
        const st = s.pc.connectionState;
        if (st === "connected") finish(null);
        else if (st === "failed" || st === "closed") finish(new Error(`connection ${st}`));
      };
      s.abortConnect = finish;
      s.pc.addEventListener("connectionstatechange", check);
      check();
    });
  }

  function onTrack(s, event) {
    if (s !== session) return;
    const stream = event.streams[0] || new MediaStream([event.track]);
    const audio = $("agent-audio");
    audio.srcObject = stream;
    audio.play().catch((err) => note(`remote audio play() failed: ${err}`));
    if (s.remoteMeter) s.remoteMeter.source.disconnect();
    s.remoteMeter = makeMeter(s.ctx, stream, 256);
    note(`remote track ${event.track.id}`);
  }

  function onConnectionState(s) {
    if (s !== session) return;
    const st = s.pc.connectionState;
    note(`connectionState ${st}`);
    if (st === "connected" && vg.state === "connecting") setState("listening");
    if (st === "failed" || st === "closed") teardown(s, st === "failed" ? "connection failed" : null);
  }

  /**
   * Starts a call. Options: `audio` (getUserMedia audio constraints, default
   * echo cancellation, noise suppression and AGC on), `iceServers` (default []),
   * `loopbackOnly` (strip non-127.0.0.1 candidates; default on for a
   * 127.0.0.1/localhost page), `connectTimeoutMs` (default 15000).
   * Resolves once connectionState is "connected"; rejects with the reason.
   */
  async function start(options = {}) {
    if (session) throw new Error(`a call is already ${vg.state}`);
    const host = location.hostname;
    const loopbackOnly = options.loopbackOnly ?? (host === "127.0.0.1" || host === "localhost");
    resetCallData();
    // Created before the first await so a click's user activation still counts.
    // 48 kHz, WebRTC's own rate: no resampling between the call and the meters
    // (a 44.1 kHz context measured ~10 ms more round trip).
    const ctx = new AudioContext({ latencyHint: "interactive", sampleRate: 48000 });
    const s = { ctx, meterTicks: 0, quietSince: null, probing: false };
    session = s;
    setState("connecting", null);
    try {
      if (s.ctx.state === "suspended") s.ctx.resume().catch((err) => note(`AudioContext resume: ${err}`));
      s.mic = await navigator.mediaDevices.getUserMedia({ audio: options.audio || DEFAULT_AUDIO });
      if (s !== session) throw new Error("stopped");
      s.micTrack = s.mic.getAudioTracks()[0];
      if (!s.micTrack) throw new Error("getUserMedia returned no audio track");
      s.micMeter = makeMeter(s.ctx, s.mic, 512);
      s.meterTimer = setInterval(() => sampleMeters(s), METER_PERIOD_MS);

      const pc = new RTCPeerConnection({ iceServers: options.iceServers || [] });
      s.pc = vg.pc = pc;
      s.sender = pc.addTransceiver(s.micTrack, { direction: "sendrecv" }).sender;
      const channel = pc.createDataChannel("voxgate");
      s.channel = vg.channel = channel;
      channel.onopen = () => s === session && note("data channel open");
      channel.onclose = () => s === session && note("data channel closed");
      channel.onmessage = (event) => onChannelMessage(s, event);
      pc.ontrack = (event) => onTrack(s, event);
      pc.onconnectionstatechange = () => onConnectionState(s);

      await pc.setLocalDescription(await pc.createOffer());
      const complete = await iceGathered(pc, GATHER_TIMEOUT_MS);
      if (!complete) note(`ICE gathering not complete after ${GATHER_TIMEOUT_MS} ms; sending what we have`);
      if (s !== session) throw new Error("stopped");
      let sdp = pc.localDescription.sdp;
      if (loopbackOnly) sdp = loopbackCandidatesOnly(sdp);

      const response = await fetch(OFFER_URL, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sdp, type: "offer" }),
      });
      if (response.status !== 200) {
        const reason = (await response.text()).trim() || response.statusText;
        throw new Error(`offer refused (${response.status}): ${reason}`);
      }
      const answer = await response.json();
      if (s !== session) throw new Error("stopped");
      vg.callId = answer.call_id ?? vg.callId;
      note(`call ${vg.callId}`);
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      await connected(s, options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS);
      if (s !== session) throw new Error("stopped");
    } catch (err) {
      const reason = err && err.message ? err.message : String(err);
      note(`start failed: ${reason}`);
      if (s === session) {
        sendHangup(vg.callId);
        teardown(s, reason);
      }
      throw err instanceof Error ? err : new Error(reason);
    }
  }

  /** Fire-and-forget DELETE of the call (errors ignored). */
  function sendHangup(callId, keepalive = false) {
    if (!callId) return Promise.resolve();
    return fetch(HANGUP_URL(callId), { method: "DELETE", keepalive }).then(
      () => undefined,
      (err) => note(`DELETE failed: ${err}`),
    );
  }

  /** Releases everything of call `s` and shows "ended" (with `error` if given). Idempotent. */
  function teardown(s, error) {
    if (s !== session) return;
    session = null;
    if (s.abortConnect) s.abortConnect(new Error(error || "call ended"));
    clearInterval(s.meterTimer);
    closeOpenBurst(s);
    if (s.channel) s.channel.close();
    if (s.pc) s.pc.close();
    if (s.mic) for (const track of s.mic.getTracks()) track.stop();
    if (s.probeStop) s.probeStop();
    s.ctx.close().catch(() => undefined);
    $("agent-audio").srcObject = null;
    levels.mic = LEVEL_FLOOR_DB;
    levels.remote = LEVEL_FLOOR_DB;
    drawMeters();
    interim.user = "";
    interim.assistant = "";
    renderInterim();
    if (error) {
      vg.error = error;
      showError(error);
    }
    setState("ended");
  }

  /** Hangs up: a "hangup" message (best effort), DELETE /whip/{call_id}, then local teardown. */
  async function stop() {
    const s = session;
    if (!s) return;
    try {
      if (s.channel && s.channel.readyState === "open") send({ type: "hangup" });
    } catch (err) {
      note(`hangup message: ${err}`);
    }
    const callId = vg.callId;
    // Tear down first so late server events cannot revive the page.
    teardown(s, null);
    await sendHangup(callId);
  }

  // ---------------------------------------------------------------- round-trip probe

  /**
   * Media round trip against an echoing agent: plays `count` tone bursts
   * (`toneMs` long, `freqHz`, one every `toneMs + gapMs`) in place of the mic
   * and times each burst's onset at a local analyser to the echo's onset at the
   * remote analyser (both polled the same way, level > `thresholdDb`). A burst
   * whose echo does not start within `gapMs` of its onset is not detected.
   * Resolves to `{samples: [ms], median_ms, detected, sent}`; the mic is restored.
   */
  async function measureRoundTrip({ count = 8, toneMs = 200, gapMs = 700, freqHz = 1000, thresholdDb = -35 } = {}) {
    const s = session;
    if (!s || !s.pc || s.pc.connectionState !== "connected") throw new Error("not connected");
    if (!s.remoteMeter) throw new Error("no remote audio track yet");
    if (s.probing) throw new Error("a round-trip measurement is already running");
    s.probing = true;

    const ctx = s.ctx;
    const osc = ctx.createOscillator();
    osc.frequency.value = freqHz;
    const gain = ctx.createGain();
    gain.gain.value = 0;
    const dest = ctx.createMediaStreamDestination();
    const local = ctx.createAnalyser();
    local.fftSize = 256;
    local.smoothingTimeConstant = 0;
    osc.connect(gain);
    gain.connect(dest);
    gain.connect(local);
    osc.start();
    const localMeter = { analyser: local, buf: new Float32Array(local.fftSize) };
    // The tone as the sent track carries it (after the graph -> track bridge).
    const trackMeter = makeMeter(ctx, dest.stream, 256);
    const remoteMeter = () => (s === session ? s.remoteMeter : null);

    let stopped = false;
    s.probeStop = () => {
      stopped = true;
    };
    const samples = [];
    const trackSamples = [];
    const onsets = []; // [local onset, echo onset] as Date.now() ms, per detected burst
    let sent = 0;
    try {
      await s.sender.replaceTrack(dest.stream.getAudioTracks()[0]);
      for (let i = 0; i < count && !stopped; i++) {
        await waitRemoteQuiet(remoteMeter, thresholdDb, () => stopped);
        if (stopped) break;
        const burst = await probeBurst(ctx, gain, localMeter, trackMeter, remoteMeter, { toneMs, gapMs, thresholdDb });
        const result = burst.rtt;
        sent++;
        if (result !== null) {
          samples.push(result);
          if (burst.trackRtt !== null) trackSamples.push(burst.trackRtt);
          onsets.push([burst.localAt, burst.echoAt]);
        }
        note(`probe burst ${i + 1}: ${result === null ? "no echo" : `${result.toFixed(1)} ms`}`);
      }
    } finally {
      gain.gain.value = 0;
      osc.stop();
      osc.disconnect();
      gain.disconnect();
      trackMeter.source.disconnect();
      s.probeStop = null;
      s.probing = false;
      if (s === session) {
        await s.sender.replaceTrack(s.micTrack).catch((err) => note(`restoring the mic: ${err}`));
      }
    }
    if (stopped) throw new Error("the call ended during the measurement");
    return {
      samples,
      median_ms: median(samples),
      track_samples: trackSamples,
      track_median_ms: median(trackSamples),
      detected: samples.length,
      sent,
      onsets,
    };
  }

  /**
   * The round trip of the microphone's own sound, for a mic that plays tone
   * bursts (a test rig's fake capture device): each rise of the mic's level
   * above `thresholdDb` after at least `quietMs` of quiet is timed to the next
   * rise of the remote level, both read the same way (a 256-sample analyser fed
   * by the track, polled). Unlike `measureRoundTrip` nothing is put in place of
   * the mic: this is the path a caller's voice takes. Resolves to `{samples:
   * [ms], median_ms, detected, sent}` after `count` mic onsets.
   */
  async function measureMicRoundTrip({ count = 8, gapMs = 700, quietMs = 150, thresholdDb = -35 } = {}) {
    const s = session;
    if (!s || !s.pc || s.pc.connectionState !== "connected") throw new Error("not connected");
    if (!s.remoteMeter) throw new Error("no remote audio track yet");
    if (s.probing) throw new Error("a round-trip measurement is already running");
    s.probing = true;
    const micMeter = makeMeter(s.ctx, s.mic, 256);
    const samples = [];
    let sent = 0;
    try {
      await new Promise((resolve) => {
        let micQuietSince = performance.now(); // the mic's last loud poll
        let onset = null;
        let remoteWasQuiet = false;
        const timer = setInterval(() => {
          const now = performance.now();
          const micLoud = rmsDb(micMeter) > thresholdDb;
          const remoteLoud = rmsDb(s.remoteMeter) > thresholdDb;
          if (s !== session || (sent >= count && onset === null)) {
            clearInterval(timer);
            resolve();
            return;
          }
          if (onset === null) {
            if (!micLoud) return;
            if (now - micQuietSince >= quietMs) {
              onset = now;
              remoteWasQuiet = !remoteLoud;
              sent++;
            }
            micQuietSince = now;
            return;
          }
          if (micLoud) micQuietSince = now; // the time of the mic's last loud poll
          if (remoteLoud && remoteWasQuiet) {
            samples.push(Math.round((now - onset) * 10) / 10);
            onset = null;
          } else if (!remoteLoud) {
            remoteWasQuiet = true;
          }
          if (onset !== null && now - onset > gapMs) onset = null; // no echo: not detected
        }, PROBE_POLL_MS);
      });
    } finally {
      micMeter.source.disconnect();
      s.probing = false;
    }
    if (s !== session) throw new Error("the call ended during the measurement");
    return { samples, median_ms: median(samples), detected: samples.length, sent };
  }

  /** Waits until the remote level stayed at or below `thresholdDb` for PROBE_QUIET_MS (capped). */
  async function waitRemoteQuiet(remoteMeter, thresholdDb, isStopped) {
    const began = performance.now();
    let quietSince = performance.now();
    while (!isStopped() && performance.now() - began < PROBE_QUIET_MAX_MS) {
      const now = performance.now();
      if (rmsDb(remoteMeter()) > thresholdDb) quietSince = now;
      else if (now - quietSince >= PROBE_QUIET_MS) return;
      await sleep(PROBE_POLL_MS);
    }
  }

  /**
   * One burst: the tone on for `toneMs`, then a poll loop. Returns the echo
   * onset minus the local onset (ms), or null if no echo rose within `gapMs`.
   * Resolves after `toneMs + gapMs` so bursts keep a fixed period, to
   * `{rtt, localAt, echoAt}` (the onsets as Date.now() ms, for server-side logs).
   */
  function probeBurst(ctx, gain, localMeter, trackMeter, remoteMeter, { toneMs, gapMs, thresholdDb }) {
    return new Promise((resolve) => {
      const began = performance.now();
      let localOnset = null;
      let trackOnset = null;
      let echoOnset = null;
      let remoteWasQuiet = false;
      gain.gain.setValueAtTime(1, ctx.currentTime);
      gain.gain.setValueAtTime(0, ctx.currentTime + toneMs / 1000);
      const timer = setInterval(() => {
        const now = performance.now();
        const remoteLoud = rmsDb(remoteMeter()) > thresholdDb;
        if (localOnset === null) {
          if (rmsDb(localMeter) > thresholdDb) {
            localOnset = now;
            remoteWasQuiet = !remoteLoud;
          }
        }
        if (localOnset !== null && trackOnset === null && rmsDb(trackMeter) > thresholdDb) {
          trackOnset = now;
        }
        if (localOnset !== null && echoOnset === null && now - localOnset <= gapMs) {
          // The echo onset is a rise after the local onset, never a level already high.
          if (remoteLoud && remoteWasQuiet) echoOnset = now;
          if (!remoteLoud) remoteWasQuiet = true;
        }
        const waitedEnough = localOnset !== null ? now - localOnset > gapMs : now - began > toneMs + gapMs;
        if (echoOnset !== null || waitedEnough) {
          clearInterval(timer);
          const rest = Math.max(0, began + toneMs + gapMs - performance.now());
          const diff = (a, b) => (a === null || b === null ? null : Math.round((a - b) * 10) / 10);
          const wall = (t) => (t === null ? null : Math.round(Date.now() - (performance.now() - t)));
          setTimeout(
            () =>
              resolve({
                rtt: diff(echoOnset, localOnset),
                trackRtt: diff(echoOnset, trackOnset),
                localAt: wall(localOnset),
                echoAt: wall(echoOnset),
              }),
            rest,
          );
        }
      }, PROBE_POLL_MS);
    });
  }

  function median(values) {
    if (!values.length) return null;
    const v = [...values].sort((a, b) => a - b);
    const mid = v.length >> 1;
    return v.length % 2 ? v[mid] : Math.round(((v[mid - 1] + v[mid]) / 2) * 10) / 10;
  }

  // ---------------------------------------------------------------- wiring

  Object.assign(vg, {
    start,
    stop,
    sendText,
    sendDigits,
    measureRoundTrip,
    measureMicRoundTrip,
    micLevelDb: () => levels.mic,
    remoteLevelDb: () => levels.remote,
  });
  window.voxgate = vg;

  function wirePage() {
    $("call").addEventListener("click", () => {
      if (session) {
        vg.stop();
      } else {
        vg.start().catch(() => undefined); // the reason is already on the page
      }
    });
    $("say").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("say-text");
      if (!input.value.trim()) return;
      try {
        vg.sendText(input.value);
        input.value = "";
      } catch (err) {
        showNotice(err.message);
      }
    });
    $("keypad").addEventListener("click", (event) => {
      const digit = event.target.closest("button[data-digit]")?.dataset.digit;
      if (!digit) return;
      try {
        vg.sendDigits(digit);
      } catch (err) {
        showNotice(err.message);
      }
    });
    window.addEventListener("pagehide", () => {
      if (session && vg.callId) sendHangup(vg.callId, true);
    });
    setState("idle");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wirePage);
  else wirePage();
})();
