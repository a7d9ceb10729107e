"""Speech recognition: Whisper tiny.en from CTranslate2 weights, log-mel front end, VAD, live streaming."""
