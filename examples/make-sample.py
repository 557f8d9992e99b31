#!/usr/bin/python3
"""Writes examples/sample.wav: 2 s of 44.1 kHz 16-bit stereo music-like audio (a kick on
every beat, hi-hats, a bass line and a melody) for the README's examples and the docs
check. Deterministic: the same bytes on every run. Standard library only.

    examples/make-sample.py [OUT]      (default: examples/sample.wav beside this script)
"""

import math
import os
import random
import struct
import sys
import wave

RATE, SECONDS = 44100, 2.0


def sample_frames():
    rng = random.Random(1234)
    n = int(RATE * SECONDS)
    beat = RATE // 4  # 120 bpm in eighths
    bass_notes = [55.0, 55.0, 65.41, 49.0]
    melody = [440.0, 493.88, 523.25, 587.33, 659.25, 587.33, 523.25, 493.88]
    frames = bytearray()
    for i in range(n):
        t = i / RATE
        k = i % (2 * beat)  # kick every quarter note: a falling sine burst
        kick = math.exp(-k / 2500.0) * math.sin(2 * math.pi * (60 + 90 * math.exp(-k / 800.0)) * k / RATE)
        hat = (rng.random() * 2 - 1) * math.exp(-(i % beat) / 400.0) * 0.25
        bass = 0.35 * math.sin(2 * math.pi * bass_notes[(i // (4 * beat)) % 4] * t)
        note = melody[(i // beat) % len(melody)]
        lead = 0.2 * math.copysign(1.0, math.sin(2 * math.pi * note * t)) * \
            math.exp(-(i % beat) / 9000.0)
        left = 0.5 * kick + hat + bass + 0.7 * lead
        right = 0.5 * kick + 0.6 * hat + bass + 0.4 * lead
        frames += struct.pack("<hh", *(int(max(-1.0, min(1.0, v * 0.8)) * 32767)
                                       for v in (left, right)))
    return bytes(frames)


def main(argv):
    out = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "sample.wav")
    with wave.open(out, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(sample_frames())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
