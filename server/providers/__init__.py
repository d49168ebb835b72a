"""Provider clients: STT, LLM, TTS and speech-to-speech, behind the protocols in :mod:`.base`."""
