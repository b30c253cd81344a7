"""Sound that is not speech, and speech under a music bed, made here for tests and bench/accuracy.py (#20).

Everything is 16 kHz mono float32 numpy, made with ffmpeg's lavfi sources or numpy
from a fixed seed, so a run hears the same sound every time:

- `battery()`: non-speech files of every kind a library holds between lines (noise of
  each colour, room tone, mains hum, a fan, traffic, rain, music with and without a beat,
  a crowd murmuring without words, silence), at levels from -50 to -12 dBFS.
- `music_bed(seconds)`: a continuous bed of music (chords, bass, a lead line, drums)
  and room noise, as under a film's action scene.
- `under_bed(speech, bed, ratio_db)`: speech mixed over the bed at a speech-to-bed ratio.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tests.media_factory import lavfi_samples

RATE = 16000


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0


def at_dbfs(samples: np.ndarray, dbfs: float) -> np.ndarray:
    """Return the samples scaled to an RMS of `dbfs`."""
    return (samples / rms(samples) * 10 ** (dbfs / 20)).astype(np.float32)


def active_rms(samples: np.ndarray) -> float:
    """Return the RMS over the 20 ms frames within 40 dB of the loudest: speech's level without its pauses."""
    frames = samples[: len(samples) // 320 * 320].reshape(-1, 320)
    energy = np.mean(np.square(frames, dtype=np.float64), axis=1)
    return float(np.sqrt(np.mean(energy[energy >= energy.max() * 1e-4])))


# ----------------------------------------------------------------------------- non-speech


def noise(colour: str, seconds: float, seed: int = 7) -> np.ndarray:
    return lavfi_samples(f"anoisesrc=c={colour}:r=16000:seed={seed}", seconds)


def hum(seconds: float, mains: float, amplitudes: Sequence[float], noise_dbfs: float) -> np.ndarray:
    """Mains hum (the mains frequency and its harmonics) over faint pink noise."""
    t = np.arange(round(seconds * RATE)) / RATE
    tones = sum(a * np.sin(2 * np.pi * mains * (k + 1) * t) for k, a in enumerate(amplitudes))
    pink = at_dbfs(noise("pink", seconds, seed=1), noise_dbfs)
    return (tones + pink[: len(t)]).astype(np.float32)


def rain(seconds: float, seed: int = 1) -> np.ndarray:
    """Faint noise with 40 short bursts a second, like rain on a window."""
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal(round(seconds * RATE)) * 0.003
    for start in rng.integers(0, len(samples) - 80, round(40 * seconds)):
        samples[start : start + 80] += rng.standard_normal(80) * rng.uniform(0.02, 0.2) * np.hanning(80)
    return samples.astype(np.float32)


def fan(seconds: float) -> np.ndarray:
    """A desk fan: low-passed noise with a blade tone at 120 Hz that wavers with the motor."""
    t = np.arange(round(seconds * RATE)) / RATE
    air = lavfi_samples("anoisesrc=c=pink:r=16000:seed=5,lowpass=f=1500", seconds)[: len(t)]
    blade = 0.3 * np.sin(2 * np.pi * 120 * t + 0.8 * np.sin(2 * np.pi * 0.7 * t))
    wavering = 1 + 0.2 * np.sin(2 * np.pi * 4 * t)
    return (at_dbfs(air, -20) + at_dbfs(blade, -28) * wavering).astype(np.float32)


def traffic(seconds: float, seed: int = 4) -> np.ndarray:
    """A street: brown rumble with cars passing every few seconds (swelling filtered noise)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * RATE)
    rumble = at_dbfs(noise("brown", seconds, seed)[:n], -30)
    car = lavfi_samples(f"anoisesrc=c=pink:r=16000:seed={seed + 1},lowpass=f=900", seconds)[:n]
    swell = np.zeros(n)
    for centre in np.arange(rng.uniform(0.5, 2.0), seconds, rng.uniform(2.5, 4.0)):
        t = np.arange(n) / RATE - centre
        swell += np.exp(-(t**2) / (2 * 0.8**2))
    return (rumble + at_dbfs(car, -22) * swell).astype(np.float32)


def murmur(voices: Sequence[np.ndarray], seconds: float, seed: int = 2) -> np.ndarray:
    """A crowd murmuring without words: many voices played backwards, over one another, low-passed.

    Reversed speech keeps speech's rhythm and spectrum and has no words in any
    language; a dozen at once make the babble of a restaurant or a foyer.
    """
    rng = np.random.default_rng(seed)
    n = round(seconds * RATE)
    mix = np.zeros(n)
    for k in range(12):
        voice = voices[k % len(voices)][::-1]
        offset = int(rng.integers(0, len(voice)))
        looped = np.resize(np.roll(voice, offset), n)
        mix += looped / max(active_rms(voice), 1e-6) * rng.uniform(0.5, 1.0)
    softened = np.convolve(mix, np.ones(6) / 6, mode="same")  # the far side of a room: highs lost
    return softened.astype(np.float32)


def chords(seconds: float, beat: bool, seed: int = 3) -> np.ndarray:
    """Music: a four-chord progression with bass, a lead line and (with `beat`) drums, at 120 bpm."""
    rng = np.random.default_rng(seed)
    n = round(seconds * RATE)
    t = np.arange(n) / RATE
    progression = [(261.6, 329.6, 392.0), (196.0, 246.9, 293.7), (220.0, 261.6, 329.6), (174.6, 220.0, 261.6)]
    bar = 2.0  # seconds a chord lasts: four beats at 120 bpm
    which = (t // bar).astype(int) % len(progression)
    music = np.zeros(n)
    for voice in range(3):
        freq = np.array([progression[c][voice] for c in range(4)])[which]
        phase = 2 * np.pi * np.cumsum(freq) / RATE
        music += sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.15
    bass = np.array([p[0] / 2 for p in progression])[which]
    music += 0.3 * np.sin(2 * np.pi * np.cumsum(bass) / RATE)
    notes = rng.choice([523.3, 587.3, 659.3, 784.0, 880.0], size=int(seconds * 4) + 1)  # eighth notes
    lead = notes[(t * 4).astype(int)]
    envelope = np.exp(-((t * 4) % 1) * 3)
    music += 0.12 * np.sin(2 * np.pi * np.cumsum(lead) / RATE) * envelope
    if beat:
        music += drums(n, rng)
    return music.astype(np.float32)


def drums(n: int, rng: np.random.Generator) -> np.ndarray:
    """Kick on beats 1 and 3, snare on 2 and 4, hi-hat on every eighth, at 120 bpm."""
    out = np.zeros(n)
    beat = RATE // 2
    k = np.arange(RATE // 5) / RATE
    kick = np.sin(2 * np.pi * (50 + 80 * np.exp(-k * 30)) * k) * np.exp(-k * 18)
    snare = rng.standard_normal(RATE // 8) * np.exp(-np.arange(RATE // 8) / RATE * 35) * 0.5
    hat = np.diff(rng.standard_normal(RATE // 40 + 1)) * np.exp(-np.arange(RATE // 40) / RATE * 200) * 0.15
    for i, start in enumerate(range(0, n, beat)):
        sound = kick if i % 2 == 0 else snare
        out[start : start + len(sound)] += sound[: n - start]
    for start in range(0, n, beat // 2):
        out[start : start + len(hat)] += hat[: n - start]
    return out


def battery(voices: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Non-speech files of every kind, 8 to 12 s each, at levels from -50 to -12 dBFS (26 files).

    `voices`: recorded speech, played backwards for the crowd murmur.
    """
    sounds = {
        f"{colour} noise {dbfs} dBFS": at_dbfs(noise(colour, 8), dbfs)
        for colour in ("white", "pink", "brown")
        for dbfs in (-50, -35, -26, -12)
    }
    room = lavfi_samples("anoisesrc=c=brown:r=16000:seed=3,lowpass=f=800,highpass=f=40", 8)
    chord = "aevalsrc='0.2*sin(2*PI*220*t)+0.2*sin(2*PI*223*t)+0.15*sin(2*PI*277*t)+0.15*sin(2*PI*330*t)'"
    return sounds | {
        "room tone -26 dBFS": at_dbfs(room, -26),
        "room tone -45 dBFS": at_dbfs(room, -45),
        "hum 50 Hz": hum(12, 50, [0.1, 0.05, 0.03, 0.02], -40),
        "hum 60 Hz": hum(12, 60, [0.05, 0.1, 0.05, 0.05], -60),  # silero heard 0.0-0.52 s as speech
        "faint hum 60 Hz": hum(12, 60, [0.02] * 4, -60),  # and base wrote "Thank you." there
        "beating chord -14 dBFS": lavfi_samples(f"{chord}:s=16000", 10),
        "fan -30 dBFS": at_dbfs(fan(10), -30),
        "traffic -24 dBFS": at_dbfs(traffic(12), -24),
        "rain": rain(10),
        "music with a beat -16 dBFS": at_dbfs(chords(12, beat=True), -16),
        "music without a beat -30 dBFS": at_dbfs(chords(12, beat=False), -30),
        "crowd murmur -28 dBFS": at_dbfs(murmur(voices, 12), -28),
        "crowd murmur -40 dBFS": at_dbfs(murmur(voices, 12, seed=9), -40),
        "silence": np.zeros(8 * RATE, np.float32),
    }


# ----------------------------------------------------------------------------- speech under a bed


def music_bed(seconds: float, dbfs: float = -24.0) -> np.ndarray:
    """A continuous music-and-room-noise bed: music with a beat, and pink room noise 15 dB under it."""
    music = at_dbfs(chords(seconds, beat=True), dbfs)
    room = at_dbfs(noise("pink", seconds, seed=11)[: len(music)], dbfs - 15)
    return (music + room).astype(np.float32)


def under_bed(speech: np.ndarray, bed: np.ndarray, ratio_db: float) -> np.ndarray:
    """Return `speech` scaled so its level (pauses left out) is `ratio_db` over the bed's, added to it."""
    gain = rms(bed) * 10 ** (ratio_db / 20) / max(active_rms(speech), 1e-9)
    return (bed + speech * gain).astype(np.float32)
