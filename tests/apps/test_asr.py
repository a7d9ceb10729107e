"""ASR app: CTranslate2 reader, log-mel front end, KV-cached decoding, VAD windows, live streaming, CLI."""
import argparse
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from edgekit.apps.asr import convert_ct2, demo, features, live, vad
from edgekit.apps.asr.eval import read_dataset, wer
from edgekit.apps.progress import read_json_lines
from edgekit.apps.asr.recognizer import CACHE_LEN, WhisperRecognizer, default_model_dir
from edgekit.errors import EdgekitError

SHARED = Path(__file__).resolve().parents[2] / "../shared"
CARDS = SHARED / "data/asr/cards"
LIBRIVOX = SHARED / "data/asr/librivox"
needs_data = pytest.mark.skipif(not CARDS.is_dir() or not LIBRIVOX.is_dir(),
                                reason="shared ASR clips not found next to the repo (../shared/data/asr)")
CLIP = LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0930.wav"   # 3.3 s
CLIP_TEXT = "he might even have been made amiable himself"


@pytest.fixture(scope="module")
def whisper():
    return convert_ct2.load_whisper(default_model_dir())


@pytest.fixture(scope="module")
def recognizer():
    return WhisperRecognizer(window=10)


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    demo.register(parser.add_subparsers(required=True))
    args = parser.parse_args(["asr", *argv])
    return args.func(args)


# --- CTranslate2 reader -------------------------------------------------------------------------------------

def _ct2_string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def test_ct2_reader_parses_variables_dtypes_and_aliases(tmp_path):
    w = np.arange(6, dtype=np.float16).reshape(2, 3)
    heads = np.array(6, np.int16)
    blob = struct.pack("<I", 6) + _ct2_string("WhisperSpec") + struct.pack("<II", 3, 2)
    for name, array, dtype_id in (("a/weight", w, 4), ("a/num_heads", heads, 2)):
        blob += _ct2_string(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
        blob += struct.pack("<BI", dtype_id, array.nbytes) + array.tobytes()
    blob += struct.pack("<I", 1) + _ct2_string("b/weight") + _ct2_string("a/weight")
    (tmp_path / "model.bin").write_bytes(blob)

    spec, variables = convert_ct2.read_ct2(tmp_path / "model.bin")
    assert spec == "WhisperSpec"
    np.testing.assert_array_equal(variables["a/weight"], w)
    assert variables["a/weight"].dtype == np.float16 and int(variables["a/num_heads"]) == 6
    assert variables["b/weight"] is variables["a/weight"]


def test_ct2_reader_rejects_other_format_versions(tmp_path):
    (tmp_path / "model.bin").write_bytes(struct.pack("<I", 5) + _ct2_string("WhisperSpec"))
    with pytest.raises(EdgekitError, match="format 5"):
        convert_ct2.read_ct2(tmp_path / "model.bin")


def test_shipped_weights_convert_to_tiny_en(whisper):
    d = whisper.dims
    assert (d.width, d.heads, d.encoder_layers, d.decoder_layers, d.vocab) == (384, 6, 4, 4, 51864)
    _, variables = convert_ct2.read_ct2(default_model_dir() / "model.bin")
    ref = variables["decoder/layer_2/attention/linear_1/weight"].astype(np.float32)
    np.testing.assert_array_equal(whisper.decoder_blocks[2].cross_kv.weight.detach().numpy(), ref)


# --- front end ----------------------------------------------------------------------------------------------

def test_log_mel_matches_torch_stft():
    audio = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 16000)).astype(np.float32)) * 0.1
    spec = torch.stft(audio, features.N_FFT, features.HOP, window=torch.hann_window(features.N_FFT),
                      center=True, pad_mode="reflect", return_complex=True)[..., :-1].abs() ** 2
    log = torch.log10(torch.clamp(torch.from_numpy(features.mel_filters(80)) @ spec, min=1e-10))
    expected = (torch.maximum(log, log.max() - 8.0) + 4.0) / 4.0
    got = features.LogMel(80)(audio)
    assert got.shape == (1, 80, 100)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_mel_filters_are_slaney_triangles():
    f = features.mel_filters(80)
    assert f.shape == (80, 201) and (f >= 0).all()
    peaks = f.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all() and peaks[-1] > 190
    bins_hz = 16000 / 2 / 200
    # Slaney normalisation: every triangle has unit area in Hz (the narrow ones only up to discretisation).
    np.testing.assert_allclose(f[45:].sum(axis=1) * bins_hz, 1.0, rtol=0.02)
    np.testing.assert_allclose(f.sum(axis=1) * bins_hz, 1.0, rtol=0.1)


def test_load_audio_resamples_and_mixes_down(tmp_path):
    rate, tone = 44100, 1000.0
    t = np.arange(rate) / rate
    stereo = (np.stack([np.sin(2 * np.pi * tone * t)] * 2, axis=1) * 16000).astype(np.int16)
    wavfile.write(tmp_path / "tone.wav", rate, stereo)
    audio = features.load_audio(tmp_path / "tone.wav")
    assert audio.dtype == np.float32 and audio.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) - tone) <= 1          # 1 Hz bins over one second
    assert 0.45 < np.abs(audio).max() < 0.5


def test_load_audio_errors_are_user_errors(tmp_path):
    with pytest.raises(EdgekitError, match="not found"):
        features.load_audio(tmp_path / "missing.wav")
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(EdgekitError, match="not a readable WAV"):
        features.load_audio(tmp_path / "text.wav")


# --- decoding -----------------------------------------------------------------------------------------------

def test_decoder_step_ignores_cache_slots_after_offset(recognizer):
    rng = np.random.default_rng(0)
    d = recognizer.dims
    cross = [rng.standard_normal((d.decoder_layers, d.heads, 250, d.head_dim)).astype(np.float32) for _ in "kv"]
    keys = rng.standard_normal((d.decoder_layers, d.heads, CACHE_LEN, d.head_dim)).astype(np.float32)
    values = rng.standard_normal(keys.shape).astype(np.float32)
    token, offset = np.array([[440]]), np.array([3])
    clean = recognizer.step(token, offset, keys, values, *cross)
    keys[:, :, 4:] += 100.0
    values[:, :, 3:] -= 100.0    # slot 3 is the current token's own: it must come from the new key/value
    noisy = recognizer.step(token, offset, keys, values, *cross)
    for a, b in zip(clean, noisy):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_cached_decoder_with_the_kernel_matches_the_step_graph(recognizer):
    """The eager decoder (fused kernel, several tokens a call, cache written in place) against the exported step
    graph (torch SDPA with a mask, one token a call), including a rejected draft overwritten in the cache."""
    from edgekit.apps.asr.app import StepDecoder
    from edgekit.apps.asr.whisper import CachedDecoder

    rng = np.random.default_rng(1)
    d = recognizer.dims
    cross = [rng.standard_normal((d.decoder_layers, d.heads, 60, d.head_dim)).astype(np.float32) for _ in "kv"]
    cached = CachedDecoder(recognizer.whisper, tuple(torch.from_numpy(c) for c in cross), CACHE_LEN)
    stepped = StepDecoder(recognizer.step, d, cross)
    tokens = [50257, 50362, 440, 1936, 286]
    np.testing.assert_allclose(cached.feed(tokens, 0, rows=3).numpy(), stepped.feed(tokens, 0, rows=3), atol=2e-3)
    cached.feed([13, 14, 15], 5)                       # a draft, then rejected: position 5 is written again
    np.testing.assert_allclose(cached.feed([318], 5).numpy(), stepped.feed([318], 5), atol=2e-3)


@needs_data
def test_a_draft_changes_speed_not_the_transcript(recognizer):
    audio = features.load_audio(CLIP)
    plain = recognizer.tokens(audio)
    assert recognizer.tokens(audio, plain[:4] + [262, 262]) == plain       # right start, wrong tail
    assert recognizer.tokens(audio, [262] * 5) == plain                   # all wrong
    assert recognizer(audio, draft=recognizer.vocab.decode(plain)) == recognizer.vocab.decode(plain)


@needs_data
def test_transcribes_a_clip(recognizer):
    text = recognizer(features.load_audio(CLIP))
    assert wer([CLIP_TEXT], [text]) <= 0.25, text


@needs_data
def test_long_audio_is_cut_at_pauses_into_windows():
    clips = [features.load_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))]
    audio = np.concatenate(clips)            # ~29.7 s of speech
    pieces = vad.windows(audio, max_seconds=8)
    assert all(len(p) <= 8 * features.SAMPLE_RATE for p in pieces)
    assert len(pieces) >= 4
    assert sum(map(len, pieces)) > 0.8 * len(audio)   # pauses between sentences are dropped, speech is not
    assert vad.windows(clips[1], max_seconds=8) == [clips[1]]


# --- test sets and CLI --------------------------------------------------------------------------------------

@needs_data
def test_read_dataset_pairs_wavs_with_references():
    utts = read_dataset(LIBRIVOX)
    assert len(utts) == 5 and all(u.wav.is_file() for u in utts)
    assert utts[1].reference == "he was not an ill disposed young man"


def test_read_dataset_reports_missing_files(tmp_path):
    with pytest.raises(EdgekitError, match="no transcript list"):
        read_dataset(tmp_path)
    (tmp_path / "transcription").write_text("<s> hello </s> (nowhere)\n")
    with pytest.raises(EdgekitError, match="does not exist"):
        read_dataset(tmp_path)


def test_wer_ignores_case_and_punctuation():
    assert wer(["he was cold hearted"], ["He was cold-hearted."]) == 0.0
    assert wer(["ten of clubs"], ["ten of clothes"]) == pytest.approx(1 / 3)


@needs_data
def test_cli_transcribe_json(capsys):
    assert cli("transcribe", str(CLIP), "--window", "10", "--json") == 0
    windows, out = read_json_lines(capsys.readouterr().out)  # a line per window as it is done, then the summary
    assert set(out) == {"type", "text", "rtf"} and out["rtf"] > 0
    assert wer([CLIP_TEXT], [out["text"]]) <= 0.25
    assert windows and out["text"] == " ".join(w["text"] for w in windows if w["text"])


@needs_data
def test_cli_eval_json(capsys, tmp_path):
    data = tmp_path / "two"
    data.mkdir()
    shutil.copy(CARDS / "003.wav", data)
    shutil.copy(CLIP, data / "clip.wav")
    (data / "transcription").write_text(f"<s> seven of clubs </s> (003)\n<s> {CLIP_TEXT} </s> (clip)\n")
    assert cli("eval", "--data", str(data), "--window", "10", "--json") == 0
    clips, out = read_json_lines(capsys.readouterr().out)  # a line per clip as it is transcribed, then the summary
    assert [c["wav"] for c in clips] == [u["wav"] for u in out["utterances"]] == ["003.wav", "clip.wav"]
    assert out["wer"] <= 0.25 and out["rtf"] > 0     # "7 of clubs" for "seven of clubs" counts as one error


@needs_data
def test_cli_rejects_bad_window():
    with pytest.raises(EdgekitError, match="window"):
        cli("transcribe", str(CLIP), "--window", "40")


# --- live ---------------------------------------------------------------------------------------------------

def test_ring_buffer_takes_new_audio_and_counts_overruns():
    ring = live.RingBuffer(seconds=0.01)      # 160 samples
    ring.push(np.arange(100, dtype=np.float32))
    first, got = ring.take()
    assert first == 0 and np.array_equal(got, np.arange(100))
    ring.push(np.arange(100, 300, dtype=np.float32))
    first, got = ring.take()
    assert ring.overruns == 1 and first == 140 and np.array_equal(got, np.arange(140, 300))
    np.testing.assert_array_equal(ring.span(0, 200), np.arange(140, 200))   # older audio is gone


@needs_data
def test_live_replay_gives_partial_and_final_transcripts(recognizer):
    audio = features.load_audio(CLIP)
    ring, done = live.RingBuffer(seconds=10), threading.Event()
    streamer = live.Streamer(recognizer, max_seconds=10, partial_every=0.5)
    live.replay(audio, ring, done, tail_seconds=1.0)
    events = [e for e in streamer.run(ring, done.is_set) if isinstance(e, live.Event)]
    finals = [e for e in events if e.kind == "final"]
    assert finals and any(e.kind == "partial" for e in events)
    assert wer([CLIP_TEXT], [" ".join(e.text for e in finals)]) <= 0.25
    assert finals[-1].latency is not None and finals[-1].latency > 0


class _DripRing(live.RingBuffer):
    """Hands out one VAD chunk per take(), whatever the clock says: the streamer sees audio arrive at a fixed
    pace per loop, so what it does when is deterministic."""

    def __init__(self, audio):
        super().__init__(seconds=30)
        self.audio, self.given = audio, 0

    def take(self):
        if self.given < len(self.audio):
            self.push(self.audio[self.given:self.given + vad.CHUNK])
            self.given += vad.CHUNK
        return super().take()


@needs_data
def test_live_final_is_transcribed_while_the_silence_is_confirmed():
    """The final transcript is computed at the first silent chunk, before the detector's min-silence wait ends,
    and is the one reported when the detector confirms that end."""
    audio = np.concatenate([features.load_audio(CLIP), np.zeros(features.SAMPLE_RATE, np.float32)])
    calls = []

    def transcribe(segment, draft=""):
        calls.append((len(segment), streamer.vad.triggered))   # triggered: the detector has not called the end
        return f"{len(segment)} samples"

    streamer = live.Streamer(transcribe, max_seconds=10, partial_every=0.5)
    ring = _DripRing(audio)
    events = [e for e in streamer.run(ring, lambda: ring.given >= len(audio)) if isinstance(e, live.Event)]
    finals = [e for e in events if e.kind == "final"]
    assert len(finals) == 1 and finals[0].latency is not None
    final_calls = [c for c in calls if f"{c[0]} samples" == finals[0].text]
    assert final_calls == [(final_calls[0][0], True)]      # transcribed once, before the end was confirmed
    assert finals[0].end - finals[0].start > 2.5


def test_live_without_input_device_is_a_clear_error(tmp_path):
    cards = Path("/proc/asound/cards")
    if cards.is_file() and "no soundcards" not in cards.read_text():
        pytest.skip("this machine has a sound card, so an input device may exist")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PULSE_SERVER": f"unix:{tmp_path}/no-server"}
    run = subprocess.run([sys.executable, "-m", "edgekit.cli", "asr", "live"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2
    assert "no audio input device" in run.stderr or "PortAudio library is missing" in run.stderr, run.stderr


def _pulseaudio_null_sink(tmp_path):
    """A user-space PulseAudio server with a null sink whose monitor is the default input, or skip."""
    if not (shutil.which("pulseaudio") and shutil.which("paplay")):
        pytest.skip("pulseaudio/paplay not installed (apt-get install pulseaudio pulseaudio-utils libportaudio2)")
    runtime = tmp_path / "pulse"
    runtime.mkdir()
    env = {"PULSE_RUNTIME_PATH": str(runtime), "XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path),
           "PATH": "/usr/bin:/bin"}
    subprocess.run(["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "--disallow-exit", "-n",
                    "--load=module-native-protocol-unix", "--load=module-null-sink sink_name=edgekit",
                    "--load=module-always-sink"], env=env, check=True, timeout=20)
    subprocess.run(["pactl", "set-default-source", "edgekit.monitor"], env=env, check=True, timeout=10)
    return env


@needs_data
def test_microphone_capture_through_pulseaudio_monitor(tmp_path, monkeypatch, recognizer):
    env = _pulseaudio_null_sink(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        ring = live.RingBuffer(seconds=10)
        with live.Microphone(ring, device="pulse"):
            time.sleep(0.3)
            subprocess.run(["paplay", "--device=edgekit", str(CLIP)], env=env, check=True, timeout=30)
            time.sleep(0.5)
        _, captured = ring.take()
        assert len(captured) > len(features.load_audio(CLIP))
        assert wer([CLIP_TEXT], [recognizer(captured[-5 * features.SAMPLE_RATE:])]) <= 0.25
    finally:
        subprocess.run(["pulseaudio", "--kill"], env=env, timeout=10)


# --- compiled backends --------------------------------------------------------------------------------------

@needs_data
def test_onnxruntime_backend_matches_eager(tmp_path, recognizer):
    compiled = WhisperRecognizer(backend="onnxruntime", artifacts=tmp_path, window=10)
    audio = features.load_audio(CLIP)
    assert compiled.tokens(audio) == recognizer.tokens(audio)


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("backend", ["executorch", "tvm"])
def test_compiled_backend_matches_eager(tmp_path, recognizer, backend):
    compiled = WhisperRecognizer(backend=backend, artifacts=tmp_path, window=10)
    audio = features.load_audio(CLIP)
    assert compiled.tokens(audio) == recognizer.tokens(audio)


@pytest.mark.slow
@needs_data
def test_librivox_wer_eager(capsys):
    assert cli("eval", "--data", str(LIBRIVOX), "--json") == 0
    assert read_json_lines(capsys.readouterr().out)[1]["wer"] <= 0.12


# --- Samba-ASR ----------------------------------------------------------------------------------------------

def _tiny_samba(scan=None):
    from edgekit.apps.asr import samba

    torch.manual_seed(0)
    return samba.SambaCTC(samba.SambaDims(width=32, layers=2, d_state=8), scan=scan).eval()


def test_samba_kernel_scan_matches_the_training_scan():
    """Inference runs the edgekit selective-scan op; training the PyTorch parallel scan: same model, same output."""
    from edgekit.apps.asr import samba
    from edgekit.kernels.scan.reference import parallel_scan

    model = _tiny_samba(parallel_scan)
    features = torch.randn(2, 160, 80)
    with torch.no_grad():
        trained = model(features)
        served = model.set_scan(samba.kernel_scan)(features)
    assert served.shape == (2, 40, 1 + len(samba.ALPHABET))
    torch.testing.assert_close(served, trained, atol=1e-4, rtol=1e-4)


def test_samba_encoder_is_causal():
    """Streaming needs it: audio after frame t changes nothing before it."""
    model = _tiny_samba()
    a = torch.randn(1, 200, 80)
    b = a.clone()
    b[:, 120:] = torch.randn(1, 80, 80)
    with torch.no_grad():
        torch.testing.assert_close(model(a)[:, :29], model(b)[:, :29])


def test_samba_blocks_start_with_mamba_time_steps():
    """softplus(dt bias) log-uniform in [1e-3, 1e-1] as in Mamba, not PyTorch's default (~0.7 everywhere)."""
    model = _tiny_samba()
    for block in model.encoder.blocks:
        dt = torch.nn.functional.softplus(block.dt_proj.bias.detach())
        assert 0.99e-3 <= dt.min() and dt.max() <= 0.101 and dt.max() / dt.min() > 10


def test_samba_decoder_reads_the_encoder_and_is_causal_over_tokens():
    """The cross-connection: the decoder's scan runs over the encoder states first, so they change every token's
    prediction; a later token changes nothing before it. Kernel scan (inference) == parallel scan (training)."""
    from edgekit.apps.asr import samba
    from edgekit.kernels.scan.reference import parallel_scan

    torch.manual_seed(0)
    model = samba.SambaCTC(samba.SambaDims(width=32, layers=2, decoder_layers=1), scan=parallel_scan).eval()
    encoded = torch.randn(1, 30, 32)
    tokens = torch.tensor([[0, *samba.encode_text("hello")]])
    with torch.no_grad():
        logits = model.decoder(encoded, tokens)
        other_audio = model.decoder(encoded + torch.randn(1, 30, 32), tokens)
        later_token = model.decoder(encoded, torch.cat([tokens[:, :4], tokens[:, 4:] % 28 + 1], dim=1))
        served = model.set_scan(samba.kernel_scan).decoder(encoded, tokens)
    assert logits.shape == (1, 6, 1 + len(samba.ALPHABET))
    assert (logits - other_audio).abs().amax(-1).min() > 1e-5  # every token's prediction moved
    torch.testing.assert_close(later_token[:, :4], logits[:, :4])
    assert (later_token[:, 4:] - logits[:, 4:]).abs().max() > 1e-4
    torch.testing.assert_close(served, logits, atol=1e-4, rtol=1e-4)


def test_decoder_targets_shift_the_transcript_by_one_and_end_with_token_0():
    from edgekit.apps.asr.samba import encode_text
    from edgekit.apps.asr.train_samba import decoder_tokens

    texts = [encode_text("ab"), encode_text("c")]
    inputs, wanted = decoder_tokens(torch.tensor(texts[0] + texts[1]), torch.tensor([2, 1]))
    assert inputs.tolist() == [[0, *texts[0]], [0, *texts[1], 0]]
    assert wanted.tolist() == [[*texts[0], 0], [*texts[1], 0, -100]]


def test_samba_decoder_steps_match_its_whole_sequence_scan():
    """Decoding runs the decoder a token at a time from the state after the encoder states (`start`/`advance`);
    training runs it over the whole sequence: the same next-character distributions."""
    from edgekit.apps.asr import samba
    from edgekit.kernels.scan.reference import parallel_scan

    torch.manual_seed(0)
    model = samba.SambaCTC(samba.SambaDims(width=32, layers=1, decoder_layers=2), scan=parallel_scan).eval()
    encoded, text = torch.randn(1, 30, 32), samba.encode_text("hello there")
    with torch.no_grad():
        whole = torch.log_softmax(model.decoder(encoded, torch.tensor([[0, *text]])), dim=-1)[0]
        first, states = model.decoder.start(encoded)
        steps = [first[0]]
        for token in text:
            nxt, states = model.decoder.advance(states, torch.tensor([token]))
            steps.append(nxt[0])
    torch.testing.assert_close(torch.stack(steps), whole, atol=1e-5, rtol=1e-5)


def _one_hot_frames(*rows: dict[str, float]) -> np.ndarray:
    """CTC log-probabilities, a frame per dict of {character or "_" for blank: probability}, the rest 1e-6."""
    from edgekit.apps.asr.samba import ALPHABET

    probs = np.full((len(rows), 1 + len(ALPHABET)), 1e-6)
    for t, row in enumerate(rows):
        for char, p in row.items():
            probs[t, 0 if char == "_" else 1 + ALPHABET.index(char)] = p
    return np.log(probs)


def test_ctc_beam_search_sums_the_paths_that_greedy_decoding_misses():
    """Two frames of blank 0.6 / "a" 0.4: the best single path is blank-blank (0.36), but the three paths that
    spell "a" sum to 0.64."""
    from edgekit.apps.asr.ctc_beam import BeamOptions, beam_search
    from edgekit.apps.asr.samba import greedy_ctc

    log_probs = _one_hot_frames({"_": 0.6, "a": 0.4}, {"_": 0.6, "a": 0.4})
    assert greedy_ctc(log_probs) == ""
    assert beam_search(log_probs, options=BeamOptions(weight=0.0, bonus=0.0)) == "a"
    # a repeat needs a blank between to stay two letters
    assert beam_search(_one_hot_frames({"l": 1.0}, {"l": 1.0}), options=BeamOptions(weight=0.0, bonus=0.0)) == "l"
    assert beam_search(_one_hot_frames({"l": 1.0}, {"_": 1.0}, {"l": 1.0}),
                       options=BeamOptions(weight=0.0, bonus=0.0)) == "ll"


def test_decoder_scores_choose_between_sounds_ctc_cannot_tell_apart():
    """CTC slightly prefers "a" over "b"; a decoder that expects "b" turns the transcript to "b" once its scores
    are added, and weight 0 leaves CTC's choice."""
    from edgekit.apps.asr import samba
    from edgekit.apps.asr.ctc_beam import BeamOptions, beam_search
    from edgekit.apps.asr.samba_decoder import EagerScorer

    torch.manual_seed(0)
    decoder = samba.SambaCTC(samba.SambaDims(width=32, layers=1, decoder_layers=1)).decoder.eval()
    with torch.no_grad():
        decoder.head.weight.zero_()
        decoder.head.bias.fill_(-10.0)
        decoder.head.bias[samba.encode_text("b")[0]] = 0.0
        decoder.head.bias[0] = 0.0  # and the end of the transcript
    log_probs = _one_hot_frames({"_": 0.1, "a": 0.47, "b": 0.43}, {"_": 1.0})
    encoded, scorer = np.random.default_rng(0).standard_normal((1, 2, 32)).astype(np.float32), EagerScorer(decoder)
    assert beam_search(log_probs, scorer, encoded, BeamOptions(weight=0.0)) == "a"
    assert beam_search(log_probs, scorer, encoded, BeamOptions(weight=0.5)) == "b"


def test_samba_recognizer_fuses_the_decoder_that_training_tuned(tmp_path):
    """Weights with a decoder are decoded by beam search with the decoder's scores, at the weight training chose;
    without one, by CTC's best path."""
    from edgekit.apps.asr import samba
    from edgekit.apps.asr.recognizer import SambaRecognizer

    torch.manual_seed(0)
    plain = samba.SambaCTC(samba.SambaDims(width=32, layers=2))
    samba.save(plain, tmp_path / "ctc.pt", {})
    assert SambaRecognizer(tmp_path / "ctc.pt").beam is None

    model = samba.SambaCTC(samba.SambaDims(width=32, layers=2, decoder_layers=1))
    with torch.no_grad():  # a decoder that hears nothing but "a"
        model.decoder.head.weight.zero_()
        model.decoder.head.bias.fill_(-20.0)
        model.decoder.head.bias[samba.encode_text("a")[0]] = 0.0
        model.decoder.head.bias[0] = -1.0
    samba.save(model, tmp_path / "dec.pt", {"beam": {"beam": 4, "weight": 5.0, "bonus": 0.0, "prune": -20.0}})
    recognizer = SambaRecognizer(tmp_path / "dec.pt")
    assert recognizer.beam is not None and recognizer.beam.weight == 5.0
    audio = 0.1 * np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    text = recognizer(audio)
    assert text and set(text) == {"a"}
    log_probs, _ = recognizer.graph(audio[None])
    assert set(samba.greedy_ctc(log_probs[0])) - {"a", " "}  # CTC alone says other letters


def test_greedy_ctc_merges_repeats_and_drops_blanks():
    from edgekit.apps.asr.samba import ALPHABET, encode_text, greedy_ctc

    ids = [0, *encode_text("he")[:1], *encode_text("he")[:1], 0, *encode_text("e"), 0, 0, *encode_text("l"), 0,
           *encode_text("l"), *encode_text("o")]
    log_probs = np.full((len(ids), 1 + len(ALPHABET)), -10.0)
    log_probs[np.arange(len(ids)), ids] = 0.0
    assert greedy_ctc(log_probs) == "hello"


def test_tts_voices_and_text_are_split():
    from edgekit.apps.asr import tts_data

    train, test = set(map(str, tts_data.voices("train"))), set(map(str, tts_data.voices("test")))
    assert train and test and not train & test
    assert tts_data.normalize_text("Don't PANIC -- it's 42!") == "don't panic it's"


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (apt-get install espeak-ng)")
def test_tts_synthesis_and_augmentation_give_16k_audio(tmp_path):
    from edgekit.apps.asr import tts_data

    rng = np.random.default_rng(0)
    audio = tts_data.synthesize(tts_data.Voice("espeak", "en-us+m3"), "a quick test", rng, tmp_path)
    assert audio.dtype == np.float32 and 0.4 * features.SAMPLE_RATE < len(audio) < 3 * features.SAMPLE_RATE
    noisy = tts_data.augment(audio, rng)
    assert len(noisy) > len(audio) and np.abs(noisy).max() <= 1.0


@pytest.mark.parametrize("backend", ["onnxruntime", "executorch"])
def test_samba_compiles_for_android_and_matches_eager_under_the_emulator(emulator_sysroot, tmp_path, backend):
    """The Samba graph (log-mel front end, Mamba blocks through the scan op, CTC head) for android-arm64;
    compile_model verifies it under the aarch64 emulator against eager and fails otherwise. ExecuTorch: the C++
    runner loads the artifact's aarch64 build of the fused scan kernel."""
    import json as json_module

    import edgekit
    from edgekit.apps.asr.samba import SambaGraph, kernel_scan

    graph = SambaGraph(_tiny_samba(kernel_scan)).eval()
    audio = 0.1 * torch.randn(1, 8000, generator=torch.Generator().manual_seed(0))
    out = edgekit.compile_model(graph, (audio,), target="android-arm64", backend=backend,
                                output=tmp_path / "samba", atol=1e-3, rtol=1e-3)
    manifest = json_module.loads((out / "manifest.json").read_text())
    verify = manifest["verify"]
    assert verify["status"] == "pass" and "emulator" in verify["where"]
    if backend == "executorch":
        (lib,) = manifest["backend_info"]["kernel_libraries"]
        assert lib["arch"] == "aarch64"
        assert (out / lib["file"]).read_bytes()[18:20] == (183).to_bytes(2, "little")  # ELF e_machine: EM_AARCH64


@pytest.mark.parametrize("backend", ["onnxruntime", "executorch", "tvm"])
def test_samba_decoder_step_compiles_and_scores_like_eager(backend, tmp_path):
    """The decoder as one compiled step graph (a beam of 4): the encoder states one position at a time, then
    characters; the same next-character log-probabilities as the eager parallel scan and recurrent step."""
    import edgekit
    from edgekit.apps.asr import samba
    from edgekit.apps.asr.samba_decoder import CompiledScorer, EagerScorer, SambaDecoderStep, step_inputs

    torch.manual_seed(0)
    decoder = samba.SambaCTC(samba.SambaDims(width=32, layers=1, decoder_layers=2)).decoder.eval()
    out = edgekit.compile_model(SambaDecoderStep(decoder).eval(), step_inputs(decoder, 4), target="host",
                                backend=backend, output=tmp_path / "step", atol=1e-4, rtol=1e-4)
    artifact = edgekit.load(out)
    compiled, eager = CompiledScorer(lambda *xs: artifact.run(list(xs)), decoder, 4), EagerScorer(decoder)
    encoded = np.random.default_rng(0).standard_normal((1, 20, 32)).astype(np.float32)
    (first_c, state_c), (first_e, state_e) = compiled.start(encoded), eager.start(encoded)
    np.testing.assert_allclose(first_c, first_e, atol=1e-4)
    tokens = samba.encode_text("hello")  # five hypotheses: more than one batch of 4
    np.testing.assert_allclose(compiled.advance([state_c] * 5, tokens)[0], eager.advance([state_e] * 5, tokens)[0],
                               atol=1e-4)


def test_samba_decoder_step_compiles_for_android_and_matches_eager_under_the_emulator(emulator_sysroot, tmp_path):
    import json as json_module

    import edgekit
    from edgekit.apps.asr import samba
    from edgekit.apps.asr.samba_decoder import SambaDecoderStep, step_inputs

    torch.manual_seed(0)
    decoder = samba.SambaCTC(samba.SambaDims(width=32, layers=1, decoder_layers=2)).decoder.eval()
    out = edgekit.compile_model(SambaDecoderStep(decoder).eval(), step_inputs(decoder, 4), target="android-arm64",
                                backend="onnxruntime", output=tmp_path / "step", atol=1e-4, rtol=1e-4)
    verify = json_module.loads((out / "manifest.json").read_text())["verify"]
    assert verify["status"] == "pass" and "emulator" in verify["where"]


def test_samba_compiles_for_jetson_with_tvm(tmp_path):
    """DLight's GEMV rule fails on the strided front end's symbolic loop extents (AttributeError on FloorDiv);
    edgekit's guarded GPU rules hand that kernel to the next rule. CUDA code cannot run here: compile only."""
    import json as json_module

    import edgekit
    from edgekit.apps.asr.samba import SambaGraph, kernel_scan

    graph = SambaGraph(_tiny_samba(kernel_scan)).eval()
    audio = 0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    out = edgekit.compile_model(graph, (audio,), target="jetson-orin", backend="tvm", output=tmp_path / "samba")
    manifest = json_module.loads((out / "manifest.json").read_text())
    assert manifest["backend_info"]["device_code"]["arch"] == "sm_87"
    assert "GEMV failed on" in manifest["backend_info"]["pipeline"]
