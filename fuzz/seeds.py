#!/usr/bin/env python3
"""Writes seed corpora for the byte-stream targets from the test vectors
(crates/msgi/tests/vectors/frames.json) into corpus/<target>/.

Layout of a frame_codec / line_codec input (see src/lib.rs, `Stream`):
[cfg u8][pad u16 BE][at u16 BE][n u8][n split bytes][stream ...]
"""
import json, os, sys

here = os.path.dirname(os.path.abspath(__file__))
vectors = json.load(open(os.path.join(here, "..", "crates", "msgi", "tests", "vectors", "frames.json")))

def frames():
    out = []
    for group, items in vectors.items():
        if isinstance(items, list):
            for v in items:
                if isinstance(v, dict) and "hex" in v:
                    out.append((group, v["name"], bytes.fromhex(v["hex"])))
    return out

def write(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, name), "wb").write(data)

def stream(cfg, body, splits=b"", pad=0, at=0xFFFF):
    return bytes([cfg]) + pad.to_bytes(2, "big") + at.to_bytes(2, "big") + bytes([len(splits)]) + splits + body

all_frames = frames()
valid = b"".join(f for g, _, f in all_frames if g == "valid")
for group, name, f in all_frames:
    write("frame_codec", f"{group}-{name}", stream(0, f))
    write("frame_codec", f"{group}-{name}-bytewise", stream(0, f, b"\x00"))
write("frame_codec", "all-valid", stream(0, valid, b"\x02\x05\x00\x11"))
# a 64 KiB frame whose body comes from the padding
big = b"MSGI" + (10 + 65536).to_bytes(4, "big") + b"\x00\x10"
write("frame_codec", "big-frame", stream(0, big, b"\x81", pad=65536 // 8))
# a 200 000-byte frame, then a frame header arriving in pieces after it
big = b"MSGI" + (10 + 200000).to_bytes(4, "big") + b"\x00\x10"
write("frame_codec", "big-then-small", stream(0x82, big + b"MSGI\x00\x00\x00\x20\x00\x10", b"\xff\x03", pad=200000 // 8, at=len(big)))
lines = b"hello\r\nworld\n\nHELLO me\r\r\n"
write("line_codec", "lines", stream(0, lines))
write("line_codec", "lines-bytewise", stream(0, lines, b"\x00"))
write("line_codec", "payloads", stream(0, b"\n".join(f[10:] for _, _, f in all_frames) + b"\n", b"\x03"))
print("seeds written", file=sys.stderr)
